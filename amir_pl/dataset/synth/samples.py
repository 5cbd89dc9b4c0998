"""The multisample renderer: the same phrases as the soundfonts, played from folders of single-note
recordings (a sample library such as the tonejs instruments, LMMS's or Hydrogen's drum kits).

A library is a config node (conf/sources/<name>.yaml)::

    root: /usr/share/lmms/samples
    instruments:                     # class -> the instruments that play it (one drawn per clip)
      cello:
        - {name: cello01, folder: instruments, notes: {cello01.ogg: A3}}   # pitch from a mapping
      piano:
        - {name: grand, folder: piano, files: "*.mp3"}                      # pitch from the file name (Cs4.mp3)
      drums:
        - {name: rock, folder: GMRockKit, layers: [soft, med, hard],       # velocity layers: the name's last word
           keys: {36: "Kick-*", 38: "Snare-*", 42: "HatClosed-*"}}          # General MIDI drum key -> files

Each note plays the sample nearest in pitch (in the velocity layer for its velocity), resampled by
linear interpolation at twice the output rate for the remaining interval (at most an octave: a
note further from every sample is played an octave nearer), faded out over
``release`` seconds after its note-off; notes overlap freely (chords, strums). Drums play their
one-shots whole. The mix is brought to the output rate by the same windowed-sinc resampler as the
front end. Everything drawn comes from the clip's generator, so a clip depends on its seed alone.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
import torch

from amir_pl.core.errors import AmirError
from amir_pl.dataset.synth.phrases import Phrase
from amir_pl.features.audio import resample

NOTE_NAME = re.compile(r"(?<![A-Za-z])([A-Ga-g])(#|s|b)?(-?\d)(?!\d)")
MIDI_PREFIX = re.compile(r"^(\d{2,3})(?=[-_ ])")
PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
OVERSAMPLE = 2  # notes are resampled at twice the output rate, then the mix is low-passed down
MAX_SHIFT = 12  # semitones a sample is transposed at most (up to 2x speed: no aliasing at OVERSAMPLE 2)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"}
# A drum key a kit lacks is played by the nearest kind it has (ride -> closed hat, toms -> any tom).
DRUM_STAND_INS = {
    44: (42,),
    46: (42,),
    51: (59, 42, 46),
    59: (51, 42),
    49: (57, 55, 51),
    57: (49, 55),
    55: (49, 57),
    **{tom: tuple(t for t in (41, 43, 45, 47, 48, 50) if t != tom) for tom in (41, 43, 45, 47, 48, 50)},
}


def note_number(name: str) -> int | None:
    """MIDI key of a note name in a file name (``Cs4``, ``C#4``, ``Db4``, ``A-1``; C4 = 60), or of a
    leading MIDI number (``066-F#.wav``); None when the name holds neither."""
    stem = Path(name).stem
    prefix = MIDI_PREFIX.match(stem)
    if prefix and 12 <= int(prefix.group(1)) <= 127:  # "066-F#"; not a track number such as "01-C4"
        return int(prefix.group(1))
    match = NOTE_NAME.search(stem)
    if not match:
        return None
    letter, accidental, octave = match.groups()
    shift = {"#": 1, "s": 1, "b": -1}.get(accidental or "", 0)
    return 12 * (int(octave) + 1) + PITCH_CLASS[letter.lower()] + shift


@dataclass
class Sample:
    key: int  # MIDI key it sounds at (drums: the GM key it plays)
    layer: int  # velocity layer, 0 = softest; -1: plays in every layer
    path: str
    audio: np.ndarray | None = None  # at OVERSAMPLE x the output rate, loaded on first use


@dataclass
class Instrument:
    """One playable instrument of a library: its samples by key and layer."""

    name: str
    drums: bool
    layers: int
    release: float
    samples: list[Sample] = field(default_factory=list)

    def pick(self, key: int, velocity: int, rng: np.random.Generator, kit: dict) -> tuple[Sample, int] | None:
        """The sample for a note and the key it is asked at (a drum key the kit lacks: a stand-in).
        Where several samples fit equally, one is drawn and kept in ``kit`` for the rest of the clip."""
        layer = min(self.layers - 1, velocity * self.layers // 128)
        in_layer = [s for s in self.samples if s.layer in (layer, -1)] or self.samples
        if self.drums:
            wanted = next((k for k in (key, *DRUM_STAND_INS.get(key, ())) if any(s.key == k for s in in_layer)), None)
            if wanted is None:
                return None
            fits = [s for s in in_layer if s.key == wanted]
        else:
            distance = min(abs(s.key - key) for s in in_layer)
            fits = [s for s in in_layer if abs(s.key - key) == distance]
            wanted = key
        if (wanted, layer) not in kit:
            kit[(wanted, layer)] = int(rng.integers(len(fits)))
        return fits[kit[(wanted, layer)] % len(fits)], wanted

    def with_few_samples(self, count: int, rng: np.random.Generator) -> Instrument:
        """This instrument with only ``count`` of its sampled notes (drawn, every layer of each kept):
        each note then plays the nearest of them, transposed, as a library of one or two samples an
        instrument sounds (``few_samples`` in conf/synth.yaml). Drums are returned whole."""
        keys = sorted({sample.key for sample in self.samples})
        if self.drums or count >= len(keys):
            return self
        kept = {keys[i] for i in rng.choice(len(keys), size=count, replace=False)}
        return replace(self, samples=[sample for sample in self.samples if sample.key in kept])


def _layer_of(path: Path, layers: list[str]) -> int:
    """The velocity layer named by the last word of the file name that is one; -1 (every layer) if none is."""
    for word in reversed(re.split(r"[-_ .]+", path.stem.lower())):
        if word in layers:
            return layers.index(word)
    return -1


def _audio_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and fnmatch.fnmatch(p.name, pattern)
    )


def build_instrument(root: Path, spec: dict) -> Instrument:
    """The instrument a config entry names; its samples are listed here and decoded on first use."""
    folder = root / spec.get("folder", ".")
    if not folder.is_dir():
        raise FileNotFoundError(folder)
    layer_names = [str(name).lower() for name in spec.get("layers") or []]
    keys, notes = spec.get("keys"), spec.get("notes")
    instrument = Instrument(
        str(spec["name"]), keys is not None, max(1, len(layer_names)), float(spec.get("release", 0.2))
    )
    if keys is not None:  # drums: GM key -> file patterns
        chosen = [
            (int(key), path)
            for key, patterns in keys.items()
            for pattern in ([patterns] if isinstance(patterns, str) else patterns)
            for path in _audio_files(folder, pattern)
        ]
    elif notes is not None:  # files without a pitch in their name: file -> note
        chosen = []
        for name, note in notes.items():
            key = note_number(str(note)) if not str(note).isdigit() else int(note)
            if key is None:
                raise AmirError(f"{folder / name}: its note {note!r} is not a note name (e.g. Cs4) or MIDI number")
            if not (folder / name).is_file():
                raise FileNotFoundError(folder / name)
            chosen.append((key, folder / name))
    else:
        chosen = []
        for path in _audio_files(folder, spec.get("files", "*")):
            key = note_number(path.name)
            if key is None:
                raise AmirError(f"{path}: no note name (e.g. Cs4) or MIDI number in the file name; map it under notes:")
            chosen.append((key, path))
    for key, path in chosen:
        layer = _layer_of(path, layer_names) if layer_names else 0
        instrument.samples.append(Sample(key, layer, str(path)))
    if not instrument.samples:
        raise FileNotFoundError(f"{folder}/{spec.get('files', '*')} (no audio files)")
    return instrument


class MultisampleRenderer:
    """Plays phrases from sample libraries; decoded samples are kept for the worker's life."""

    name = "multisample"

    def __init__(self, sample_rate: int, max_seconds: float):
        self.sample_rate = sample_rate
        self.rate = OVERSAMPLE * sample_rate
        self.max_frames = round(max_seconds * self.rate)  # no note needs more of a sample than this
        self.instruments: dict[tuple[str, str], list[Instrument]] = {}

    def instruments_for(self, source: str, root: str, label: str, specs: list[dict]) -> list[Instrument]:
        if (source, label) not in self.instruments:
            self.instruments[(source, label)] = [build_instrument(Path(root), dict(spec)) for spec in specs]
        return self.instruments[(source, label)]

    def _load(self, sample: Sample) -> np.ndarray:
        if sample.audio is None:
            try:
                with soundfile.SoundFile(sample.path) as handle:
                    rate = handle.samplerate
                    data = handle.read(round(self.max_frames * rate / self.rate) + 1, dtype="float32", always_2d=True)
            except Exception as error:
                raise AmirError(f"{sample.path}: cannot be decoded ({error})") from None
            mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
            # Band-limited to the output's Nyquist frequency first, so that a note raised by up to an
            # octave (MAX_SHIFT) stays below the oversampled rate's: no aliasing from the interpolation.
            audio = resample(resample(mono, rate, self.sample_rate), self.sample_rate, self.rate).numpy()
            sample.audio = _trim_lead(audio, self.rate)
        return sample.audio

    def play(self, instrument: Instrument, phrase: Phrase, frames: int, rng: np.random.Generator) -> np.ndarray:
        """``frames`` samples at the output rate of the phrase played by ``instrument``."""
        total = frames * OVERSAMPLE
        mix = np.zeros(total, dtype=np.float64)
        release = round(instrument.release * self.rate)
        kit: dict = {}
        for start_seconds, end_seconds, key, velocity in phrase.notes():
            start = round(start_seconds * self.rate)
            picked = instrument.pick(key, velocity, rng, kit) if start < total else None
            if picked is None:
                continue
            sample, asked = picked
            audio = self._load(sample)
            ratio = 1.0 if instrument.drums else 2.0 ** (_within_an_octave(asked - sample.key) / 12)
            length = min(total - start, int((len(audio) - 1) / ratio))
            held = length if instrument.drums else max(1, round((end_seconds - start_seconds) * self.rate))
            length = min(length, held + release)
            if length <= 0:
                continue
            voice = _interpolate(audio, ratio, length)
            if length > held:  # the release after note-off
                voice[held:] *= np.linspace(1.0, 0.0, length - held, endpoint=False) ** 2
            tail = min(length, round(0.005 * self.rate))  # no click where a sample ends before its note
            voice[length - tail :] *= np.linspace(1.0, 0.0, tail)
            gain = (velocity / 127) ** (1.0 if instrument.layers > 1 else 2.0)
            mix[start : start + length] += gain * voice
        out = resample(torch.from_numpy(mix.astype(np.float32)), self.rate, self.sample_rate).numpy()
        return out[:frames]


def _within_an_octave(shift: int) -> int:
    """A transposition beyond MAX_SHIFT semitones folded back by octaves (the pitch class kept): a
    library with one note per instrument plays far notes an octave nearer rather than aliased."""
    while shift > MAX_SHIFT:
        shift -= 12
    while shift < -MAX_SHIFT:
        shift += 12
    return shift


def _interpolate(audio: np.ndarray, ratio: float, length: int) -> np.ndarray:
    """``length`` samples of ``audio`` played ``ratio`` times faster (linear interpolation)."""
    position = np.arange(length, dtype=np.float64) * ratio
    index = position.astype(np.int64)
    fraction = position - index
    return audio[index] * (1.0 - fraction) + audio[index + 1] * fraction


def _trim_lead(audio: np.ndarray, rate: int) -> np.ndarray:
    """Drop the silence before the note (mp3 encoder delay, a late start), keeping 2 ms."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return audio
    onset = int(np.argmax(np.abs(audio) >= 0.05 * peak))
    return audio[max(0, onset - round(0.002 * rate)) :]
