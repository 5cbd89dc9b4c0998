"""amir-synth: the built-in dataset, solo phrases rendered offline from General MIDI soundfonts.

    amir-synth output=data/synth clips_per_class=150
    amir-synth output=data/synth_b seed=2 splits='{test: {fonts: [FluidR3, MuseScore], fraction: 1}}'

Writes ``<output>/<split>/<class>/<class>-<split>-<index>.flac`` (22,050 Hz mono,
peak-normalised), the class-per-folder layout that ``amir-prepare`` reads, and
``<output>/manifest.csv`` (path, label, split, font, bank, program, style, ...).
By default train and validation come from the FluidR3 / MuseScore family and
test from the TimGM6mb / sf_GMbank family: other recordings than training, as
in the thesis.

Rendering is in-process: pyfluidsynth (Debian ``libfluidsynth3``) or, where
that is missing, tinysoundfont (pip). Synths live only in worker processes (a
process that has run a synth hangs the children it forks), and every clip gets a
fresh synth, so nothing bleeds from one clip into the next and a clip's audio
depends on its seed alone.
"""

from __future__ import annotations

import csv
import ctypes
import importlib.util
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import soundfile
from omegaconf import DictConfig
from tqdm import tqdm

from amir_pl.audio import frame_rms
from amir_pl.cli import CONFIG_DIR, AmirError, user_errors
from amir_pl.labels import CLASS_NAMES
from amir_pl.report import atomic_write

log = logging.getLogger(__name__)

DRUM_CHANNEL = 9  # MIDI channel 10
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PENTATONIC, BLUES = (0, 2, 4, 7, 9), (0, 3, 5, 6, 7, 10)
SCALES = (MAJOR, MINOR, PENTATONIC, BLUES)
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 11), (0, 3, 7, 10), (0, 4, 7, 10), (0, 5, 7), (0, 7, 12))
# GM percussion keys
KICK, SNARE, CLOSED_HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 42, 46, 51, 49
TOMS = (41, 43, 45, 47, 48, 50)


@dataclass(frozen=True)
class Instrument:
    programs: tuple[int, ...]
    low: int  # MIDI key range used
    high: int
    styles: tuple[str, ...]  # phrase kinds drawn from
    bank: int = 0


INSTRUMENTS: dict[str, Instrument] = {
    "electric_bass": Instrument((33, 34, 35), 28, 55, ("scale", "arpeggio", "melody", "riff")),
    "cello": Instrument((42,), 36, 69, ("scale", "arpeggio", "melody")),
    "drums": Instrument((0, 8, 16, 24, 25, 32, 40), 35, 81, ("groove", "fill"), bank=128),
    "flute": Instrument((73,), 60, 93, ("scale", "arpeggio", "melody")),
    "acoustic_guitar": Instrument((24, 25), 40, 76, ("strum", "arpeggio", "melody", "chords")),
    "electric_guitar": Instrument((26, 27, 28, 29, 30), 40, 84, ("strum", "riff", "melody", "chords")),
    "organ": Instrument((16, 17, 18, 19), 36, 84, ("chords", "melody", "arpeggio")),
    "piano": Instrument((0, 1, 2, 3), 33, 96, ("chords", "melody", "arpeggio", "scale")),
    "saxophone": Instrument((64, 65, 66, 67), 49, 80, ("scale", "melody", "riff")),
    "trumpet": Instrument((56,), 54, 82, ("scale", "arpeggio", "melody")),
    "violin": Instrument((40,), 55, 93, ("scale", "arpeggio", "melody")),
    "vocals": Instrument((52, 53), 48, 79, ("melody", "scale")),
}


@dataclass
class Phrase:
    """MIDI events of one clip: (seconds, 'on'|'off', key, velocity)."""

    style: str
    tempo: float
    events: list[tuple[float, str, int, int]] = field(default_factory=list)

    def note(self, start: float, length: float, key: int, velocity: int) -> None:
        self.events.append((start, "on", key, velocity))
        self.events.append((start + length, "off", key, 0))


def compose_phrase(instrument: Instrument, seconds: float, rng: np.random.Generator) -> Phrase:
    """A seeded random solo phrase: tempo, dynamics, articulation and register vary."""
    style = str(rng.choice(instrument.styles))
    tempo = float(rng.uniform(70, 160))
    beat = 60.0 / tempo
    phrase = Phrase(style, tempo)
    start = float(rng.uniform(0.0, 0.25))
    velocity = int(rng.integers(50, 118))
    articulation = float(rng.choice([0.35, 0.7, 0.95]))  # staccato, normal, legato
    if style in ("groove", "fill"):
        _drums(phrase, style, start, beat, seconds, velocity, rng)
        return phrase
    span = instrument.high - instrument.low
    centre = int(rng.integers(instrument.low + span // 4, instrument.high - span // 4 + 1))
    scale = SCALES[int(rng.integers(len(SCALES)))]
    root = centre - int(rng.integers(0, 12))

    def fit(key: int) -> int:
        while key > instrument.high:
            key -= 12
        while key < instrument.low:
            key += 12
        return key

    def scale_key(degree: int) -> int:
        octave, step = divmod(degree, len(scale))
        return fit(root + 12 * octave + scale[step])

    def jitter(value: int) -> int:
        return int(np.clip(value + rng.integers(-12, 13), 20, 127))

    t = start
    if style in ("scale", "arpeggio", "melody", "riff"):
        step = beat * float(rng.choice([0.25, 0.5, 1.0] if style != "melody" else [0.5, 1.0, 1.5]))
        degree = int(rng.integers(0, len(scale)))
        direction = int(rng.choice([-1, 1]))
        riff = [int(rng.integers(-3, 4)) for _ in range(int(rng.integers(3, 6)))]
        i = 0
        while t < seconds:
            if style == "scale":
                degree += direction
                if rng.random() < 0.15:
                    direction = -direction
            elif style == "arpeggio":
                degree += 2 * direction
                if abs(degree) > 2 * len(scale):
                    direction = -direction
            elif style == "riff":
                degree = riff[i % len(riff)]
            else:
                degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            length = step * (float(rng.choice([1, 1, 2])) if style == "melody" else 1.0)
            phrase.note(t, length * articulation, scale_key(degree), jitter(velocity))
            t += length
            i += 1
    else:  # chords and strums, for polyphonic instruments
        while t < seconds:
            chord = CHORDS[int(rng.integers(len(CHORDS)))]
            base = scale_key(int(rng.integers(0, len(scale))))
            length = beat * float(rng.choice([1.0, 2.0]))
            offset = 0.0
            strum_gap = float(rng.uniform(0.01, 0.04)) if style == "strum" else 0.0
            keys = sorted({fit(base + interval) for interval in chord})
            if style == "strum" and rng.random() < 0.5:
                keys = keys[::-1]  # up-strum
            for key in keys:
                phrase.note(t + offset, length * articulation, key, jitter(velocity))
                offset += strum_gap
            t += length
    return phrase


def _drums(phrase: Phrase, style: str, t: float, beat: float, seconds: float, velocity: int, rng) -> None:
    step = beat / 2  # eighth notes
    hat = int(rng.choice([CLOSED_HAT, CLOSED_HAT, OPEN_HAT, RIDE]))
    kicks = {0, 4} | ({3} if rng.random() < 0.5 else set()) | ({6} if rng.random() < 0.3 else set())
    i = 0
    if style == "fill":
        phrase.note(t, 0.3, CRASH, velocity)
    while t < seconds:
        position = i % 8
        if style == "groove" or i < 4:
            phrase.note(t, step, hat, int(np.clip(velocity - 20 + 10 * (position % 2 == 0), 20, 127)))
            if position in kicks:
                phrase.note(t, step, KICK, velocity)
            if position in (2, 6):
                phrase.note(t, step, SNARE, velocity)
        else:  # a fill: snare and toms in sixteenths
            for k in range(2):
                key = int(rng.choice((SNARE, *TOMS)))
                phrase.note(t + k * step / 2, step / 2, key, int(np.clip(velocity + rng.integers(-15, 10), 20, 127)))
        t += step
        i += 1


# --- renderers --------------------------------------------------------------------------------


class FluidSynthRenderer:
    """libfluidsynth through pyfluidsynth, float output, a fresh synth for every clip.

    A reused synth is not history-free: a voice keeps filter state from the note it
    last played, so the same clip rendered after different clips differed in its
    first milliseconds. A fresh synth per clip makes every clip depend on its seed
    alone and nothing bleed; a holder synth keeps each font loaded, so fluidsynth's
    sample cache makes the per-clip load cheap (30-200 ms, measured).
    """

    name = "fluidsynth"

    def __init__(self, sample_rate: int):
        import fluidsynth

        self._fluidsynth = fluidsynth
        self.sample_rate = sample_rate
        self.holder = fluidsynth.Synth(samplerate=float(sample_rate))
        self.held: dict[str, int] = {}
        self.synth = None
        self._write = fluidsynth._fl.fluid_synth_write_float
        self._write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]

    def _hold(self, path: str) -> int:
        if path not in self.held:
            sfid = self.holder.sfload(path)
            if sfid < 0:
                raise AmirError(f"fluidsynth could not load the soundfont {path}")
            self.held[path] = sfid
        return self.held[path]

    def has_preset(self, font: str, bank: int, program: int) -> bool:
        return self.holder.sfpreset_name(self._hold(font), bank, program) is not None

    def select(self, font: str, bank: int, program: int, channel: int) -> None:
        self._hold(font)
        self.reset()
        self.synth = self._fluidsynth.Synth(gain=0.4, samplerate=float(self.sample_rate))
        self.synth.program_select(channel, self.synth.sfload(font), bank, program)

    def effects(self, reverb: float, chorus: float) -> None:
        self.synth.set_reverb(roomsize=0.2 + 0.7 * reverb, damping=0.4, width=0.8, level=reverb)
        self.synth.set_chorus(nr=3, level=chorus * 2.0, speed=0.3, depth=8.0, type=0)

    def noteon(self, channel, key, velocity):
        self.synth.noteon(channel, key, velocity)

    def noteoff(self, channel, key):
        self.synth.noteoff(channel, key)

    def render(self, frames: int) -> np.ndarray:
        left, right = np.zeros(frames, np.float32), np.zeros(frames, np.float32)
        if frames:
            self._write(self.synth.synth, frames, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return 0.5 * (left + right)

    def reset(self) -> None:
        if self.synth is not None:
            self.synth.delete()
            self.synth = None


class TinySoundFontRenderer:
    """tinysoundfont (pip): the fallback where libfluidsynth is missing; no reverb or chorus.

    Like the fluidsynth renderer, a fresh synth per clip (fonts kept in memory as bytes).
    """

    name = "tinysoundfont"

    def __init__(self, sample_rate: int):
        import tinysoundfont

        self._tinysoundfont = tinysoundfont
        self.sample_rate = sample_rate
        self.font_bytes: dict[str, bytes] = {}
        self.probes: dict[str, tuple] = {}  # font -> (synth, sfid), to look presets up
        self.synth = None

    def _synth_with(self, font: str):
        if font not in self.font_bytes:
            self.font_bytes[font] = Path(font).read_bytes()
        synth = self._tinysoundfont.Synth(samplerate=self.sample_rate, gain=-6.0)
        return synth, synth.sfload(self.font_bytes[font])

    def has_preset(self, font: str, bank: int, program: int) -> bool:
        if font not in self.probes:
            self.probes[font] = self._synth_with(font)
        synth, sfid = self.probes[font]
        return synth.sfpreset_name(sfid, bank, program) is not None

    def select(self, font: str, bank: int, program: int, channel: int) -> None:
        self.synth, sfid = self._synth_with(font)
        self.synth.program_select(channel, sfid, bank, program, is_drums=bank == 128)

    def effects(self, reverb: float, chorus: float) -> None:
        pass

    def noteon(self, channel, key, velocity):
        self.synth.noteon(channel, key, velocity)

    def noteoff(self, channel, key):
        self.synth.noteoff(channel, key)

    def render(self, frames: int) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        stereo = np.frombuffer(self.synth.generate(frames), dtype=np.float32).reshape(-1, 2)
        return (0.5 * (stereo[:, 0] + stereo[:, 1])).astype(np.float32)

    def reset(self) -> None:
        self.synth = None


def available_renderer(choice: str) -> str:
    """'fluidsynth' or 'tinysoundfont' for ``choice`` ('auto' prefers fluidsynth)."""
    has_fluid = _can_import_fluidsynth()
    has_tiny = importlib.util.find_spec("tinysoundfont") is not None
    if choice == "fluidsynth" or (choice == "auto" and has_fluid):
        if not has_fluid:
            raise AmirError(
                "renderer=fluidsynth: pyfluidsynth or libfluidsynth3 is missing; "
                "apt-get install libfluidsynth3 && pip install pyfluidsynth, or renderer=tinysoundfont"
            )
        return "fluidsynth"
    if choice in ("auto", "tinysoundfont"):
        if not has_tiny:
            raise AmirError(
                "no renderer: install libfluidsynth3 + pyfluidsynth, or pip install --no-deps tinysoundfont"
            )
        if choice == "auto":
            log.warning("libfluidsynth is missing: rendering with the tinysoundfont fallback (no reverb/chorus)")
        return "tinysoundfont"
    raise AmirError(f"renderer={choice!r}: expected auto, fluidsynth or tinysoundfont")


def _can_import_fluidsynth() -> bool:
    try:
        import fluidsynth  # noqa: F401  (raises ImportError when libfluidsynth is missing)
    except (ImportError, OSError):
        return False
    return True


def fallback_font() -> str | None:
    """The TimGM6mb.sf2 that the pretty_midi wheel ships (install it with --no-deps)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    return str(path) if path.is_file() else None


# --- rendering clips --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipJob:
    split: str
    label: str
    index: int
    font_name: str
    font_path: str
    seed: tuple[int, ...]


@dataclass
class ClipResult:
    job: ClipJob
    path: str
    bank: int
    program: int
    style: str
    tempo: float
    reverb: float
    chorus: float
    noise_snr_db: float | None
    attempts: int


_renderer = None
_settings: dict = {}


def _init_worker(renderer: str, settings: dict) -> None:
    global _renderer, _settings
    cls = FluidSynthRenderer if renderer == "fluidsynth" else TinySoundFontRenderer
    _renderer = cls(settings["sample_rate"])  # created here, after the fork
    _settings = settings


def render_clip(job: ClipJob) -> ClipResult:
    s = _settings
    instrument = INSTRUMENTS[job.label]
    frames = round(s["clip_seconds"] * s["sample_rate"])
    rng = np.random.default_rng(job.seed)
    programs = [p for p in instrument.programs if _renderer.has_preset(job.font_path, instrument.bank, p)]
    if not programs:
        raise AmirError(
            f"soundfont {job.font_path} has none of the {job.label} programs "
            f"{list(instrument.programs)} (bank {instrument.bank})"
        )
    for attempt in range(1, 6):  # noqa: B007 (read after the loop) -- a phrase that renders (almost) silent is redrawn
        program = int(rng.choice(programs))
        channel = DRUM_CHANNEL if instrument.bank == 128 else 0
        reverb = float(rng.uniform(0.0, 0.6)) if rng.random() < s["effects_probability"] else 0.0
        chorus = float(rng.uniform(0.0, 0.5)) if rng.random() < s["effects_probability"] else 0.0
        phrase = compose_phrase(instrument, s["clip_seconds"], rng)
        _renderer.select(job.font_path, instrument.bank, program, channel)
        _renderer.effects(reverb, chorus)
        audio = _play(phrase, channel, frames)
        _renderer.reset()
        peak = float(np.abs(audio).max())
        if peak > 0:
            audio = audio / peak * float(rng.uniform(*s["peak_range"]))  # peak-normalised, then a random gain
            if frame_rms_np(audio) > s["min_rms"]:
                break
    else:
        raise AmirError(f"{job.label} ({job.font_name}, program {program}) rendered (almost) silent 5 times")
    snr = None
    if rng.random() < s["noise_probability"]:
        snr = float(rng.uniform(*s["noise_snr_db"]))
        rms = np.sqrt(np.mean(audio**2))
        audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * rms / 10 ** (snr / 20)
        audio = audio / max(1.0, float(np.abs(audio).max()))
    path = Path(s["output"]) / job.split / job.label / f"{job.label}-{job.split}-{job.index:05d}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio.astype(np.float32), s["sample_rate"], subtype="PCM_16")
    return ClipResult(
        job,
        str(path.relative_to(s["output"])),
        instrument.bank,
        program,
        phrase.style,
        round(phrase.tempo, 1),
        round(reverb, 3),
        round(chorus, 3),
        None if snr is None else round(snr, 1),
        attempt,
    )


def frame_rms_np(audio: np.ndarray) -> float:
    import torch

    return float(frame_rms(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None])[0])


def _play(phrase: Phrase, channel: int, frames: int) -> np.ndarray:
    """Render ``frames`` samples of the phrase, each event at its sample."""
    rate = _renderer.sample_rate
    out, position = [], 0
    for seconds, kind, key, velocity in sorted(phrase.events, key=lambda e: (e[0], e[1] == "on")):
        at = min(frames, max(position, round(seconds * rate)))
        out.append(_renderer.render(at - position))
        position = at
        if position >= frames:
            break
        if kind == "on":
            _renderer.noteon(channel, key, velocity)
        else:
            _renderer.noteoff(channel, key)
    out.append(_renderer.render(frames - position))
    return np.concatenate(out)


# --- the app ----------------------------------------------------------------------------------


def resolve_fonts(cfg: DictConfig, renderer: str) -> dict[str, str]:
    """Font name -> file; a missing file is an error naming the Debian package, unless a fallback applies."""
    fonts, missing = {}, {}
    for name, spec in cfg.fonts.items():
        if Path(spec.path).is_file():
            fonts[name] = spec.path
        else:
            missing[name] = spec
    used = {name for split in cfg.splits.values() for name in split.fonts}
    absent = sorted(used & set(missing))
    if absent:
        fallback = fallback_font()
        if cfg.allow_fallback_font and fallback:
            log.warning(
                "soundfonts %s missing: using pretty_midi's TimGM6mb.sf2 for them; train and test "
                "then share recordings",
                absent,
            )
            for name in absent:
                fonts[name] = fallback
        else:
            hints = ", ".join(
                f"{name} ({missing[name].path}: apt-get install {missing[name].package})" for name in absent
            )
            raise AmirError(f"soundfonts not found: {hints}")
    return fonts


def make_jobs(cfg: DictConfig, fonts: dict[str, str]) -> list[ClipJob]:
    classes = list(cfg.classes)
    unknown = [name for name in classes if name not in INSTRUMENTS]
    if unknown:
        raise AmirError(f"classes: no instrument definition for {unknown}; known: {list(INSTRUMENTS)}")
    total_fraction = sum(float(split.fraction) for split in cfg.splits.values())
    jobs = []
    for split_index, (split, spec) in enumerate(cfg.splits.items()):
        per_class = round(cfg.clips_per_class * float(spec.fraction) / total_fraction)
        names = list(spec.fonts)
        for class_index, label in enumerate(classes):
            for index in range(per_class):
                font = names[index % len(names)]
                seed = (
                    int(cfg.seed),
                    split_index,
                    CLASS_NAMES.index(label) if label in CLASS_NAMES else class_index,
                    index,
                )
                jobs.append(ClipJob(split, label, index, font, fonts[font], seed))
    return jobs


def synth(cfg: DictConfig) -> Path:
    output = Path(cfg.output).expanduser().resolve()
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        raise AmirError(f"output={output} is not empty; add overwrite=true to render into it anyway")
    renderer = available_renderer(cfg.renderer)
    fonts = resolve_fonts(cfg, renderer)
    jobs = make_jobs(cfg, fonts)
    settings = {
        "output": str(output),
        "sample_rate": int(cfg.sample_rate),
        "clip_seconds": float(cfg.clip_seconds),
        "effects_probability": float(cfg.effects_probability),
        "noise_probability": float(cfg.noise_probability),
        "noise_snr_db": tuple(cfg.noise_snr_db),
        "peak_range": tuple(cfg.peak_range),
        "min_rms": float(cfg.min_rms),
    }
    output.mkdir(parents=True, exist_ok=True)
    results = []
    bar = tqdm(total=len(jobs), unit="clip", desc=f"amir-synth ({renderer})", disable=not cfg.progress)
    # Always in worker processes, even for one: a process that has run a fluidsynth synth hangs
    # the children it forks later, so this one never creates a synth.
    pool = multiprocessing.get_context("fork").Pool(max(1, cfg.num_workers), _init_worker, (renderer, settings))
    try:
        for result in pool.imap(render_clip, jobs, chunksize=4):
            results.append(result)
            bar.update()
    finally:
        bar.close()
        pool.terminate()
    manifest = output / "manifest.csv"

    def write_manifest(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "path",
                    "label",
                    "split",
                    "font",
                    "font_file",
                    "bank",
                    "program",
                    "style",
                    "tempo",
                    "reverb",
                    "chorus",
                    "noise_snr_db",
                    "renderer",
                ]
            )
            for r in results:
                writer.writerow(
                    [
                        r.path,
                        r.job.label,
                        r.job.split,
                        r.job.font_name,
                        os.path.basename(r.job.font_path),
                        r.bank,
                        r.program,
                        r.style,
                        r.tempo,
                        r.reverb,
                        r.chorus,
                        "" if r.noise_snr_db is None else r.noise_snr_db,
                        renderer,
                    ]
                )

    atomic_write(manifest, write_manifest)
    counts = {split: sum(1 for r in results if r.job.split == split) for split in cfg.splits}
    print(f"rendered {len(results)} clips with {renderer} into {output}: {counts}")
    print(f"manifest: {manifest}")
    return output


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="synth")
def main(cfg: DictConfig) -> None:
    with user_errors("amir-synth"):
        synth(cfg)


if __name__ == "__main__":
    main()
