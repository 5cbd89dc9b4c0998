"""The built-in dataset (amir-synth): solo phrases rendered offline from General MIDI soundfonts and
from sample libraries of real recordings, every source in a named family.

    amir-synth output=data/synth clips_per_class=150
    amir-synth output=data/synth_b seed=2 '~splits.train' '~splits.val' 'splits.test.families=[fluid]'

Writes ``<output>/<split>/<class>/<family>/<class>-<split>-<index>.flac`` (22,050 Hz mono,
peak-normalised), the class-per-folder layout that ``amir-prepare`` reads (so the family is in
the dataset file's ``source`` rows), and ``<output>/manifest.csv`` (path, label, split, family,
source, bank, program, instrument, style, ...). Each split names its families; a split's clips
of a class are shared in turn by its families that have the class, and within a family by its
sources. A sample library that is not installed is skipped with one line.

With ``accompaniment.probability``, that share of the clips of ``accompaniment.splits`` is played
over 1-3 accompanying instruments of the same split's families (drums and bass among them as often
as ``rhythm_probability``), each a drawn number of dB below the clip's instrument, in its tempo and
key: IRMAS-TrainingData's kind of excerpt, labelled by its predominant instrument, with every
instrument listed in the manifest's ``instruments`` column (amir-prepare's multi-hot ``targets``).
The clip's own instrument plays exactly what its solo clip would.

With ``mixtures.count``, also multi-instrument excerpts of the families of ``mixtures.splits``:
``<output>/mixtures/<split>/<split>-mix-<index>.flac`` with a ``.txt`` of the predominant
instruments beside it (IRMAS's test-set form) and ``<output>/mixtures.csv``. Every part is a solo
phrase (render_part, as a clip's) at its RMS level, the predominant ones the loudest.

Soundfonts play in-process through pyfluidsynth (Debian ``libfluidsynth3``) or, where
that is missing, tinysoundfont (pip); sample libraries through the multisample renderer
(samples.py). Synths live only in worker processes (a
process that has run a synth hangs the children it forks), and every clip gets a
fresh synth, so nothing bleeds from one clip into the next and a clip's audio
depends on its seed alone.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write, warn_if_short_of_space, write_fault
from amir_pl.core.labels import CLASS_NAMES, irmas_code
from amir_pl.dataset.synth.phrases import DRUM_CHANNEL, INSTRUMENTS, Instrument, Phrase, compose_phrase
from amir_pl.dataset.synth.recordings import RecordingPlayer, find_recordings
from amir_pl.dataset.synth.renderers import FluidSynthRenderer, TinySoundFontRenderer, available_renderer, fallback_font
from amir_pl.dataset.synth.samples import MultisampleRenderer, build_instrument
from amir_pl.features.audio import frame_rms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipJob:
    split: str
    label: str
    index: int
    family: str
    source: str
    seed: tuple[int, ...]
    # accompanying instruments: (class, source, RMS level in dB against the clip's instrument)
    accompaniment: tuple[tuple[str, str, float], ...] = ()


@dataclass
class ClipResult:
    job: ClipJob
    path: str
    bank: int | None
    program: int | None
    instrument: str
    style: str
    tempo: float | None  # None: a recording (its own tempo is not known)
    reverb: float
    chorus: float
    articulation: str
    noise_snr_db: float | None
    room_rt60: float | None
    mic_db: float | None
    attempts: int


@dataclass(frozen=True)
class MixtureJob:
    split: str
    index: int
    seconds: float
    labels: tuple[str, ...]  # the instruments, the predominant ones first
    sources: tuple[str, ...]  # the source playing each
    levels_db: tuple[float, ...]  # the RMS level of each: 0 for the predominant ones, below for the rest
    predominant: int  # how many of the first instruments are predominant
    seed: tuple[int, ...]


@dataclass
class MixtureResult:
    job: MixtureJob
    path: str
    noise_snr_db: float | None


@dataclass(frozen=True)
class UsableSource:
    """A source that is installed, with the classes it can play."""

    name: str
    family: str
    kind: str
    location: str  # the soundfont file or the library's folder
    classes: tuple[str, ...]
    instruments: dict | None = None  # samples: class -> instrument specs found; recordings: class -> RecordingSets
    programs: dict | None = None  # soundfont: class -> General MIDI programs, where not the class's defaults


_renderer = None
_samples: dict[float, MultisampleRenderer] = {}  # by the longest phrase they play (clips, mixtures)
_recordings: RecordingPlayer | None = None
_settings: dict = {}


def _init_worker(renderer: str, settings: dict) -> None:
    global _renderer, _samples, _recordings, _settings
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (it hangs)
    cls = FluidSynthRenderer if renderer == "fluidsynth" else TinySoundFontRenderer
    _renderer = cls(settings["sample_rate"])  # created here, after the fork
    _samples = {}
    _recordings = RecordingPlayer(settings["sample_rate"])
    _settings = settings


@dataclass
class Part:
    """One instrument's phrase as rendered (render_part): a solo clip, or a stem of a mixture."""

    audio: np.ndarray
    phrase: Phrase
    program: int | None  # soundfonts: the GM program played
    instrument: str  # sample libraries: the instrument played; recordings: the file and the start
    reverb: float
    chorus: float
    articulation: str  # soundfonts: the offsets drawn (``articulation``), "" for none
    attempts: int


# SoundFont generators that ``articulation`` offsets (SoundFont 2.04, section 8.1.2) and the manifest's name of each
ARTICULATION_GENERATORS = {
    "attack_timecents": (34, "attack"),  # attackVolEnv
    "release_timecents": (38, "release"),  # releaseVolEnv
    "vibrato_cents": (6, "vibrato"),  # vibLfoToPitch
    "vibrato_rate_cents": (24, "vibrato_rate"),  # freqVibLFO
}


def _draw_articulation(instrument: Instrument, split: str, rng: np.random.Generator) -> dict[str, int]:
    """The ``articulation`` offsets of one soundfont part, or {} (no draw at all when off, outside its
    splits or for drums, so those renders stay as they were); whole cents and timecents, as the manifest
    gives them."""
    art = _settings["articulation"]
    if not art["probability"] or split not in art["splits"] or instrument.bank == 128:
        return {}
    if rng.random() >= art["probability"]:
        return {}
    return {name: round(float(rng.uniform(*art[name]))) for name in ARTICULATION_GENERATORS}


def render_part(
    source: UsableSource,
    label: str,
    seconds: float,
    rng: np.random.Generator,
    longest: float | None = None,
    with_phrase: Phrase | None = None,
    *,
    split: str,
) -> Part:
    """``seconds`` of a phrase of ``label`` played by ``source``, everything drawn from ``rng``,
    peak-normalised to a random peak in ``peak_range``; a phrase that renders (almost) silent is
    redrawn, up to 5 times. ``with_phrase``: another part's phrase, whose tempo and key it keeps.
    ``split``: the part's split, which decides whether ``few_samples`` applies."""
    shared = {} if with_phrase is None else {"tempo": with_phrase.tempo, "tonality": with_phrase.tonality}
    s = _settings
    instrument = INSTRUMENTS[label]
    frames = round(seconds * s["sample_rate"])
    if source.kind == "recordings":
        sets = source.instruments[label]  # RecordingSets, found once by usable_sources
    elif source.kind == "soundfont":
        wanted = (source.programs or {}).get(label, instrument.programs)
        programs = [p for p in wanted if _renderer.has_preset(source.location, instrument.bank, p)]
        if not programs:
            raise AmirError(
                f"soundfont {source.location} has none of the {label} programs {list(wanted)} (bank {instrument.bank})"
            )
    else:
        # samples are read up to what the longest phrase of this kind (``longest``: clips or mixtures)
        # can need, a note at most 2x slower, so a clip does not depend on mixtures rendered beside it
        longest = seconds if longest is None else longest
        if longest not in _samples:
            _samples[longest] = MultisampleRenderer(s["sample_rate"], 2.5 * longest + 0.5)
        sampler = _samples[longest]
        players = sampler.instruments_for(source.name, source.location, label, source.instruments[label])
    for attempt in range(1, 6):  # noqa: B007 (read after the loop) -- a phrase that renders (almost) silent is redrawn
        if source.kind == "soundfont":
            program = int(rng.choice(programs))
            channel = DRUM_CHANNEL if instrument.bank == 128 else 0
            reverb = float(rng.uniform(0.0, 0.6)) if rng.random() < s["effects_probability"] else 0.0
            chorus = float(rng.uniform(0.0, 0.5)) if rng.random() < s["effects_probability"] else 0.0
            phrase = compose_phrase(instrument, seconds, rng, **shared)
            offsets = _draw_articulation(instrument, split, rng)
            _renderer.select(source.location, instrument.bank, program, channel)
            _renderer.effects(reverb, chorus)
            if offsets:
                _renderer.articulate(channel, {ARTICULATION_GENERATORS[k][0]: v for k, v in offsets.items()})
            audio = _play(phrase, channel, frames)
            _renderer.reset()
            played = f"bank {instrument.bank} program {program}"
            articulation = " ".join(f"{ARTICULATION_GENERATORS[k][1]}={v:+g}" for k, v in offsets.items())
        elif source.kind == "recordings":  # an excerpt in its own tempo and key; the phrase only gives
            program, reverb, chorus, articulation = None, 0.0, 0.0, ""  # the accompaniment over it a tempo and key
            audio, played = _recordings.excerpt(sets[int(rng.integers(len(sets)))], frames, rng)
            drawn = compose_phrase(instrument, seconds, rng, **shared)
            phrase = Phrase("recording", drawn.tempo, tonality=drawn.tonality)
        else:
            player = players[int(rng.integers(len(players)))]
            played = player.name
            few = s["few_samples"]  # no draw when off, outside its splits or for drums: those renders stay as they were
            if few["probability"] and split in few["splits"] and not player.drums and rng.random() < few["probability"]:
                count = int(rng.integers(few["samples"][0], few["samples"][1] + 1))
                if (fewer := player.with_few_samples(count, rng)) is not player:
                    player, played = fewer, f"{played} [{count} of its notes]"
            program, reverb, chorus, articulation = None, 0.0, 0.0, ""
            phrase = compose_phrase(instrument, seconds, rng, **shared)
            audio = sampler.play(player, phrase, frames, rng)
        peak = float(np.abs(audio).max())
        if peak > 0:
            audio = audio / peak * float(rng.uniform(*s["peak_range"]))  # peak-normalised, then a random gain
            if frame_rms_np(audio) > s["min_rms"]:
                break
    else:
        raise AmirError(f"{label} ({source.name}, {played}) rendered (almost) silent 5 times")
    instrument_played = played if source.kind != "soundfont" else ""
    return Part(audio, phrase, program, instrument_played, reverb, chorus, articulation, attempt)


def render_clip(job: ClipJob) -> ClipResult:
    s = _settings
    source: UsableSource = s["sources"][job.source]
    rng = np.random.default_rng(job.seed)
    part = render_part(source, job.label, s["clip_seconds"], rng, split=job.split)
    audio = part.audio
    name = f"{job.split}/{job.label}/{job.family}/{job.label}-{job.split}-{job.index:05d}.flac"
    if job.accompaniment:
        audio, stems = with_accompaniment(part, job.accompaniment, rng, job.split)
        if s["accompaniment_stems"]:  # each part as it is in the clip (before room, microphone and noise)
            for label, stem in zip([job.label, *(name for name, _, _ in job.accompaniment)], stems, strict=True):
                _write_flac(Path(s["output"]) / "clip_stems" / Path(name).with_suffix("") / f"{label}.flac", stem)
    room = mic = None
    coloured = job.split in s["room_splits"]  # e.g. rooms in training only: val and test stay as recorded
    if coloured and s["room_probability"] and rng.random() < s["room_probability"]:  # no draw when off
        room = float(rng.uniform(*s["room_rt60"]))
        audio = in_a_room(audio, s["sample_rate"], room, rng)
    if coloured and s["mic_probability"] and rng.random() < s["mic_probability"]:
        mic = float(rng.uniform(3.0, s["mic_db"]))
        audio = through_a_microphone(audio, s["sample_rate"], mic, rng)
    audio, snr = _with_noise(audio, rng)
    _write_flac(Path(s["output"]) / name, audio)
    return ClipResult(
        job,
        name,
        INSTRUMENTS[job.label].bank if source.kind == "soundfont" else None,
        part.program,
        part.instrument,
        part.phrase.style,
        round(part.phrase.tempo, 1) if source.kind != "recordings" else None,  # a recording's own: not known
        round(part.reverb, 3),
        round(part.chorus, 3),
        part.articulation,
        None if snr is None else round(snr, 1),
        None if room is None else round(room, 2),
        None if mic is None else round(mic, 1),
        part.attempts,
    )


def with_accompaniment(
    part: Part, accompaniment, rng: np.random.Generator, split: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``part`` over its accompanying instruments, each a phrase in its tempo and key at its RMS level
    (dB against ``part``), the sum brought back to ``part``'s peak; and each part as it is in the sum."""
    s = _settings
    lead = part.audio.astype(np.float64)
    lead_rms = np.sqrt(np.mean(lead**2))
    stems = [lead]
    for label, name, level_db in accompaniment:
        other = render_part(s["sources"][name], label, s["clip_seconds"], rng, with_phrase=part.phrase, split=split)
        audio = other.audio.astype(np.float64)
        stems.append(audio / np.sqrt(np.mean(audio**2)) * lead_rms * 10 ** (level_db / 20))
    gain = np.abs(lead).max() / np.abs(np.sum(stems, axis=0)).max()
    stems = [(stem * gain).astype(np.float32) for stem in stems]
    return np.sum(stems, axis=0, dtype=np.float32), stems


def render_mixture(job: MixtureJob) -> MixtureResult:
    """The job's instruments, each a phrase of the mixture's length (render_part) brought to its RMS
    level (0 dB for the predominant ones), summed, peak-normalised to a random peak in ``peak_range``,
    with noise as the solo clips get it; the flac and its IRMAS-style .txt of the predominant ones."""
    s = _settings
    rng = np.random.default_rng(job.seed)
    stems = []
    for label, name, level_db in zip(job.labels, job.sources, job.levels_db, strict=True):
        part = render_part(
            s["sources"][name], label, job.seconds, rng, longest=s["mixture_seconds_max"], split=job.split
        )
        audio = part.audio.astype(np.float64)
        stems.append(audio / np.sqrt(np.mean(audio**2)) * 10 ** (level_db / 20))
    mix = np.sum(stems, axis=0)
    gain = float(rng.uniform(*s["peak_range"])) / float(np.abs(mix).max())
    audio, snr = _with_noise((mix * gain).astype(np.float32), rng)
    name = f"mixtures/{job.split}/{job.split}-mix-{job.index:05d}"
    path = Path(s["output"]) / name
    _write_flac(path.with_suffix(".flac"), audio)
    lines = "".join(f"{irmas_code(label)}\n" for label in job.labels[: job.predominant])
    atomic_write(path.with_suffix(".txt"), lambda tmp: tmp.write_text(lines))
    if s["mixture_stems"]:  # each part as it is in the mix (before the noise), for checking or separation
        for label, stem in zip(job.labels, stems, strict=True):
            stem_path = Path(s["output"]) / f"mixture_stems/{job.split}/{path.name}/{label}.flac"
            _write_flac(stem_path, np.clip(stem * gain, -1.0, 1.0).astype(np.float32))
    return MixtureResult(job, f"{name}.flac", None if snr is None else round(snr, 1))


def _with_noise(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """White noise at a random SNR, with ``noise_probability``; the peak kept at most 1."""
    s = _settings
    if rng.random() >= s["noise_probability"]:
        return audio, None
    snr = float(rng.uniform(*s["noise_snr_db"]))
    rms = np.sqrt(np.mean(audio**2))
    audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * rms / 10 ** (snr / 20)
    return audio / max(1.0, float(np.abs(audio).max())), snr


def _write_flac(path: Path, audio: np.ndarray) -> None:
    """16-bit FLAC at the output rate, written under a temporary name and renamed (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(
            path,
            lambda tmp: soundfile.write(
                str(tmp), audio.astype(np.float32), _settings["sample_rate"], format="FLAC", subtype="PCM_16"
            ),
        )
    except (soundfile.LibsndfileError, OSError) as error:  # libsndfile says only "System error."
        fault = write_fault(path, error)
        if fault is error:
            raise
        raise fault from error


def render_job(job: ClipJob | MixtureJob) -> ClipResult | MixtureResult:
    """The pool's one entry point: solo clips and mixtures share the workers and the progress bar."""
    return render_clip(job) if isinstance(job, ClipJob) else render_mixture(job)


def in_a_room(audio: np.ndarray, rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` played in a generated room: the direct sound, a few early reflections (3-40 ms) and
    a diffuse tail of noise decaying by 60 dB in ``rt60`` seconds, at a random direct-to-reverberant
    ratio (0 to 12 dB); peak kept."""
    length = round(rt60 * rate)
    t = np.arange(length) / rate
    response = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    response[: round(0.003 * rate)] = 0.0
    tail_energy = float(np.sum(response**2))
    response *= np.sqrt(10 ** (-rng.uniform(0.0, 12.0) / 10) / tail_energy)  # the tail's energy vs the direct's
    response[0] = 1.0
    for delay in rng.uniform(0.003, 0.04, size=4):
        response[round(delay * rate)] += float(rng.uniform(-0.6, 0.6))
    size = len(audio) + length - 1
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(response, size), size)[: len(audio)]
    return (wet * np.abs(audio).max() / max(float(np.abs(wet).max()), 1e-9)).astype(np.float32)


def through_a_microphone(audio: np.ndarray, rate: int, depth_db: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random frequency response (5 points on a log-frequency axis, +-``depth_db``), as a
    microphone and preamp would colour the sound; peak kept."""
    spectrum = np.fft.rfft(audio)
    freqs = np.maximum(np.fft.rfftfreq(len(audio), 1 / rate), 20.0)
    points = np.log(np.geomspace(20.0, rate / 2, 5))
    gain_db = np.interp(np.log(freqs), points, rng.uniform(-depth_db, depth_db, size=5))
    out = np.fft.irfft(spectrum * 10 ** (gain_db / 20), len(audio))
    return (out * np.abs(audio).max() / max(float(np.abs(out).max()), 1e-9)).astype(np.float32)


def frame_rms_np(audio: np.ndarray) -> float:

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


def usable_sources(cfg: DictConfig, renderer: str) -> dict[str, UsableSource]:
    """The sources the splits' families name that are installed. A missing soundfont is an error naming
    its package (or, where allowed, pretty_midi's TimGM6mb stands in); a missing sample library, or an
    instrument folder of one, is skipped with one line."""
    families = {family for split in cfg.splits.values() for family in split.families}
    unknown = sorted(families - {spec.family for spec in cfg.sources.values()})
    if unknown:
        known = sorted({spec.family for spec in cfg.sources.values()})
        raise AmirError(f"splits: no source of the families {unknown}; families: {known} (conf/sources/)")
    usable, missing_fonts = {}, {}
    for name, spec in cfg.sources.items():
        if spec.family not in families:
            continue
        _check_source(name, spec)
        if spec.kind == "soundfont":
            if Path(spec.path).is_file():
                classes, programs = _font_programs(spec)
                usable[name] = UsableSource(name, spec.family, "soundfont", spec.path, classes, programs=programs)
            elif spec.optional:
                log.warning("source %s skipped: %s not found (%s)", name, spec.path, spec.install)
            else:
                missing_fonts[name] = spec
            continue
        root = Path(spec.root).expanduser()
        if not root.is_dir():
            log.warning("source %s skipped: %s not found (%s)", name, root, spec.install)
            continue
        found = {}
        if spec.kind == "recordings":
            longest = _longest_part(cfg, spec.family)
        for label, specs in spec.instruments.items():
            kept = []
            for instrument in specs:
                entry = OmegaConf.to_container(instrument)
                try:
                    if spec.kind == "recordings":
                        recordings, short = find_recordings(root, entry, longest)
                        if short:
                            log.warning(
                                "source %s: %s files shorter than %s s left out: %s",
                                name,
                                entry["name"],
                                longest,
                                short,
                            )
                        kept.append(recordings)
                    else:
                        build_instrument(root, entry)
                        kept.append(entry)
                except FileNotFoundError as error:
                    log.warning("source %s: %s skipped (%s not found; %s)", name, instrument.name, error, spec.install)
            if kept:
                found[label] = kept
        usable[name] = UsableSource(name, spec.family, str(spec.kind), str(root), tuple(found), found)
    if missing_fonts:
        fallback = fallback_font()
        if not (cfg.allow_fallback_font and fallback):
            hints = ", ".join(f"{name} ({spec.path}: {spec.install})" for name, spec in missing_fonts.items())
            raise AmirError(f"soundfonts not found: {hints}")
        log.warning(
            "soundfonts %s missing: using pretty_midi's TimGM6mb.sf2 for them; train and test then share recordings",
            sorted(missing_fonts),
        )
        for name, spec in missing_fonts.items():
            classes, programs = _font_programs(spec)
            usable[name] = UsableSource(name, spec.family, "soundfont", fallback, classes, programs=programs)
    return usable


def _longest_part(cfg: DictConfig, family: str) -> float:
    """Seconds a source of ``family`` may be asked to play: a clip, or a mixture where the family is in one."""
    in_mixtures = cfg.mixtures.count and any(
        family in cfg.splits[split].families for split in cfg.mixtures.splits if split in cfg.splits
    )
    return max([cfg.clip_seconds, *(cfg.mixtures.seconds if in_mixtures else [])])


def _font_programs(spec: DictConfig) -> tuple[tuple[str, ...], dict]:
    """A soundfont source's classes (all but those given no programs) and its programs where not the defaults."""
    programs = {label: tuple(int(p) for p in spec.programs[label]) for label in spec.programs or {}}
    return tuple(label for label in INSTRUMENTS if programs.get(label) != ()), programs


def _check_source(name: str, spec: DictConfig) -> None:
    """A source's config has what its kind needs (a user may add conf/sources/<name>.yaml)."""
    where = f"sources.{name}"
    if spec.kind == "soundfont":
        if not spec.path:
            raise AmirError(f"{where}.path: a soundfont source needs the path of its .sf2/.sf3 file")
        for label, programs in (spec.programs or {}).items():
            if label not in INSTRUMENTS:
                raise AmirError(f"{where}.programs.{label}: not a class; the classes are {list(INSTRUMENTS)}")
            if not all(isinstance(p, int) and 0 <= p <= 127 for p in programs):
                raise AmirError(
                    f"{where}.programs.{label}={list(programs)}: give General MIDI programs, 0-127 ([] leaves it out)"
                )
        return
    if not spec.root or not spec.instruments:
        raise AmirError(f"{where}: a {spec.kind} source needs root (its folder) and instruments ({{class: [...]}})")
    for label, specs in spec.instruments.items():
        if label not in INSTRUMENTS:
            raise AmirError(f"{where}.instruments.{label}: not a class; the classes are {list(INSTRUMENTS)}")
        for index, instrument in enumerate(specs):
            if not instrument.get("name"):
                raise AmirError(f"{where}.instruments.{label}[{index}]: give the instrument a name")
            if spec.kind == "recordings" and not instrument.get("files"):
                raise AmirError(f"{where}.instruments.{label}[{index}]: give files, a glob pattern under root")


def make_jobs(cfg: DictConfig, sources: dict[str, UsableSource]) -> list[ClipJob]:
    classes = list(cfg.classes)
    unknown = [name for name in classes if name not in INSTRUMENTS]
    if unknown:
        raise AmirError(f"classes: no instrument definition for {unknown}; known: {list(INSTRUMENTS)}")
    total_fraction = sum(float(split.fraction) for split in cfg.splits.values())
    jobs = []
    for split_index, (split, spec) in enumerate(cfg.splits.items()):
        per_class = round(cfg.clips_per_class * float(spec.fraction) / total_fraction)
        unplayed = []
        for class_index, label in enumerate(classes):
            players = _players(sources, spec.families, label)
            if not players:
                unplayed += [label] if per_class else []
                continue
            for index in range(per_class):
                names = players[index % len(players)]
                source = sources[names[(index // len(players)) % len(names)]]
                seed = (
                    int(cfg.seed),
                    split_index,
                    CLASS_NAMES.index(label) if label in CLASS_NAMES else class_index,
                    index,
                )
                backing = draw_accompaniment(cfg, sources, spec.families, label, split, (*seed, ACCOMPANIMENT_SEED))
                jobs.append(ClipJob(split, label, index, source.family, source.name, seed, backing))
        if unplayed:
            log.warning(
                "split %s: no installed source of the families %s plays %s", split, list(spec.families), unplayed
            )
    return jobs


def _players(sources: dict[str, UsableSource], families, label: str) -> list[list[str]]:
    """The families (in the split's order) that play ``label``, each as its sources that do."""
    players = [
        [source.name for source in sources.values() if source.family == family and label in source.classes]
        for family in families
    ]
    return [names for names in players if names]


ACCOMPANIMENT_SEED = 0x61636D  # b"acm": a clip's accompaniment is drawn from (clip seed, this)
RHYTHM_SECTION = ("drums", "electric_bass")


def draw_accompaniment(
    cfg: DictConfig, sources: dict[str, UsableSource], families, label: str, split: str, seed: tuple[int, ...]
) -> tuple[tuple[str, str, float], ...]:
    """The accompanying instruments of one clip, from its own seed: none (with 1 - ``probability``,
    or outside ``accompaniment.splits``), else 1-3 other classes that the split's families play, drums
    and bass each first with ``rhythm_probability``, each a source of the split's families and a level."""
    a = cfg.accompaniment
    if not a.probability or split not in a.splits:
        return ()
    rng = np.random.default_rng(seed)
    if rng.random() >= a.probability:
        return ()
    players = {name: _players(sources, families, name) for name in cfg.classes if name != label}
    playable = [name for name, found in players.items() if found]
    count = min(int(rng.integers(a.instruments[0], a.instruments[1] + 1)), len(playable))
    rhythm = [name for name in RHYTHM_SECTION if name in playable and rng.random() < a.rhythm_probability]
    others = [name for name in playable if name not in rhythm]
    chosen = rhythm[:count] + [others[i] for i in rng.permutation(len(others))[: max(0, count - len(rhythm))]]
    backing = []
    for name in chosen:
        names = players[name][int(rng.integers(len(players[name])))]
        level = round(float(rng.uniform(*a.level_db)), 1)
        backing.append((name, names[int(rng.integers(len(names)))], level))
    return tuple(backing)


MIXTURE_SEED = 0x6D6978  # b"mix": a mixture's seed (seed, MIXTURE_SEED, split, index) is never a clip's


def make_mixture_jobs(cfg: DictConfig, sources: dict[str, UsableSource]) -> list[MixtureJob]:
    """``mixtures.count`` mixtures for each split of ``mixtures.splits``, each drawn from its own seed:
    its length, its instruments (distinct classes that the split's families play), how many of them
    are predominant, a source of the split's families for each (a family that has the class, then one
    of its sources that does) and the level of each accompanying one."""
    m = cfg.mixtures
    if not m.count:
        return []
    jobs = []
    for split_index, (split, spec) in enumerate(cfg.splits.items()):
        if split not in m.splits:
            continue
        players = {label: _players(sources, spec.families, label) for label in cfg.classes}
        playable = [label for label in cfg.classes if players[label]]
        if len(playable) < m.instruments[0]:
            raise AmirError(
                f"mixtures.instruments={list(m.instruments)}: the installed sources of split {split}'s families "
                f"{list(spec.families)} play only {playable} of classes"
            )
        for index in range(m.count):
            seed = (int(cfg.seed), MIXTURE_SEED, split_index, index)
            rng = np.random.default_rng(seed)
            seconds = round(float(rng.uniform(*m.seconds)), 1)
            count = int(rng.integers(m.instruments[0], min(m.instruments[1], len(playable)) + 1))
            predominant = int(rng.integers(m.predominant[0], min(m.predominant[1], count - 1) + 1))
            labels = [playable[i] for i in rng.choice(len(playable), count, replace=False)]
            chosen = []
            for label in labels:
                names = players[label][int(rng.integers(len(players[label])))]
                chosen.append(names[int(rng.integers(len(names)))])
            levels = [0.0] * predominant
            levels += [round(float(rng.uniform(*m.background_db)), 1) for _ in range(count - predominant)]
            jobs.append(
                MixtureJob(split, index, seconds, tuple(labels), tuple(chosen), tuple(levels), predominant, (*seed, 1))
            )
    return jobs


def _check_mixtures(cfg: DictConfig) -> None:
    """The ``mixtures`` options make sense together; else one line naming the option."""
    m = cfg.mixtures
    for key in ("instruments", "predominant", "seconds", "background_db"):
        if len(m[key]) != 2 or m[key][0] > m[key][1]:
            raise AmirError(f"mixtures.{key}={list(m[key])}: give a range [low, high] with low <= high")
    if m.count < 0:
        raise AmirError(f"mixtures.count={m.count}: give the number of mixtures per split (0: none)")
    _check_splits("mixtures", cfg)
    if m.instruments[0] < 2:
        raise AmirError(f"mixtures.instruments={list(m.instruments)}: a mixture has at least 2 instruments")
    if m.predominant[0] < 1 or m.predominant[0] >= m.instruments[0]:
        raise AmirError(
            f"mixtures.predominant={list(m.predominant)}: give 1 or more, and fewer than mixtures.instruments "
            f"({list(m.instruments)}) so that every mixture has a quieter instrument"
        )
    if m.seconds[0] <= 0:
        raise AmirError(f"mixtures.seconds={list(m.seconds)}: give a length in seconds above 0")
    if m.background_db[1] >= 0:
        raise AmirError(
            f"mixtures.background_db={list(m.background_db)}: the accompanying instruments must be quieter "
            "than the predominant ones (below 0 dB)"
        )


def _check_accompaniment(cfg: DictConfig) -> None:
    """The ``accompaniment`` options make sense together; else one line naming the option."""
    a = cfg.accompaniment
    if not 0 <= a.probability <= 1:
        raise AmirError(
            f"accompaniment.probability={a.probability}: give a share of the clips in [0, 1] (0: solo only)"
        )
    if len(a.instruments) != 2 or not 1 <= a.instruments[0] <= a.instruments[1]:
        raise AmirError(
            f"accompaniment.instruments={list(a.instruments)}: give a range [low, high] with 1 <= low <= high"
        )
    if len(a.level_db) != 2 or a.level_db[0] > a.level_db[1] or a.level_db[1] >= 0:
        raise AmirError(
            f"accompaniment.level_db={list(a.level_db)}: give [low, high] below 0 dB: the accompaniment is "
            "quieter than the clip's (predominant) instrument"
        )
    _check_splits("accompaniment", cfg)


def _check_splits(option: str, cfg: DictConfig) -> None:
    """``<option>.splits`` names splits of this render; else one line naming them."""
    splits = list(cfg[option].splits)
    if unknown := sorted(set(splits) - set(cfg.splits)):
        raise AmirError(
            f"{option}.splits={splits}: {unknown} not a split of this render; its splits are {list(cfg.splits)}"
        )


def _check_few_samples(cfg: DictConfig) -> None:
    """The ``few_samples`` options make sense together; else one line naming the option."""
    f = cfg.few_samples
    if not 0 <= f.probability <= 1 or len(f.samples) != 2 or not 1 <= f.samples[0] <= f.samples[1]:
        raise AmirError(
            f"few_samples.probability={f.probability} samples={list(f.samples)}: give a share in [0, 1] (0: off) "
            "and a range [low, high] of sampled notes with 1 <= low <= high"
        )
    _check_splits("few_samples", cfg)


def _check_articulation(cfg: DictConfig, renderer: str) -> None:
    """The ``articulation`` options make sense together and the renderer can play them; else one line."""
    a = cfg.articulation
    if not 0 <= a.probability <= 1:
        raise AmirError(f"articulation.probability={a.probability}: give a share in [0, 1] (0: off)")
    for name in ARTICULATION_GENERATORS:
        if len(a[name]) != 2 or a[name][0] > a[name][1]:
            raise AmirError(f"articulation.{name}={list(a[name])}: give a range [low, high] with low <= high")
    _check_splits("articulation", cfg)
    if renderer != "fluidsynth":
        raise AmirError(
            f"articulation.probability={a.probability} needs fluidsynth (the renderer here is {renderer}): "
            "apt-get install libfluidsynth3 && pip install pyfluidsynth, and renderer=auto or renderer=fluidsynth; "
            "or articulation.probability=0"
        )


def synth(cfg: DictConfig) -> Path:
    output = Path(cfg.output).expanduser().resolve()
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        rendered = any((output / name).is_dir() for name in ("train", "val", "test", "mixtures", "clip_stems"))
        if rendered and not any((output / name).is_file() for name in ("manifest.csv", "mixtures.csv")):
            raise AmirError(
                f"output={output} holds a render that did not finish (no manifest.csv: an earlier run stopped "
                "part-way); add overwrite=true to render it again from the start (finished files are replaced)"
            )
        raise AmirError(f"output={output} is not empty; add overwrite=true to render into it anyway")
    if cfg.mic_db < 3.0:
        raise AmirError(f"mic_db={cfg.mic_db}: the microphone colour's depth is drawn from 3 dB up to it; give >= 3")
    if unknown := sorted(set(cfg.room_splits) - {"train", "val", "test"}):
        raise AmirError(f"room_splits={list(cfg.room_splits)}: {unknown} not a split; name some of train, val, test")
    if cfg.mixtures.count:
        _check_mixtures(cfg)
    if cfg.accompaniment.probability:
        _check_accompaniment(cfg)
    if cfg.few_samples.probability:
        _check_few_samples(cfg)
    renderer = available_renderer(cfg.renderer)
    if cfg.articulation.probability:
        _check_articulation(cfg, renderer)
    sources = usable_sources(cfg, renderer)
    jobs = make_jobs(cfg, sources)
    mixture_jobs = make_mixture_jobs(cfg, sources)
    if not jobs and not mixture_jobs:
        raise AmirError("nothing to render: no installed source plays the classes in any split")
    settings = {
        "sources": sources,
        "output": str(output),
        "sample_rate": int(cfg.sample_rate),
        "clip_seconds": float(cfg.clip_seconds),
        "effects_probability": float(cfg.effects_probability),
        "noise_probability": float(cfg.noise_probability),
        "noise_snr_db": tuple(cfg.noise_snr_db),
        "peak_range": tuple(cfg.peak_range),
        "min_rms": float(cfg.min_rms),
        "room_probability": float(cfg.room_probability),
        "room_rt60": tuple(cfg.room_rt60),
        "mic_probability": float(cfg.mic_probability),
        "mic_db": float(cfg.mic_db),
        "room_splits": set(cfg.room_splits),
        "mixture_stems": bool(cfg.mixtures.stems),
        "accompaniment_stems": bool(cfg.accompaniment.stems),
        "mixture_seconds_max": float(cfg.mixtures.seconds[1]),
        "few_samples": {
            "probability": float(cfg.few_samples.probability),
            "samples": tuple(cfg.few_samples.samples),
            "splits": set(cfg.few_samples.splits),
        },
        "articulation": {
            "probability": float(cfg.articulation.probability),
            "splits": set(cfg.articulation.splits),
            **{name: tuple(cfg.articulation[name]) for name in ARTICULATION_GENERATORS},
        },
    }
    output.mkdir(parents=True, exist_ok=True)
    # 16-bit samples: FLAC takes about half, so this errs on the safe side (stems, when asked for, not counted)
    seconds = len(jobs) * float(cfg.clip_seconds) + len(mixture_jobs) * float(cfg.mixtures.seconds[1])
    warn_if_short_of_space(output, int(seconds * int(cfg.sample_rate) * 2), "the rendered files", "output=")
    results, mixtures = [], []
    total = len(jobs) + len(mixture_jobs)
    bar = tqdm(total=total, unit="file", desc=f"amir-synth ({renderer})", disable=not cfg.progress)
    # Always in worker processes, even for one: a process that has run a fluidsynth synth hangs
    # the children it forks later, so this one never creates a synth.
    pool = multiprocessing.get_context("fork").Pool(max(1, cfg.num_workers), _init_worker, (renderer, settings))
    try:
        for result in pool.imap(render_job, [*jobs, *mixture_jobs], chunksize=4):
            (results if isinstance(result, ClipResult) else mixtures).append(result)
            bar.update()
    finally:
        bar.close()
        pool.terminate()
    if results:
        manifest = output / "manifest.csv"
        atomic_write(manifest, lambda tmp: _write_manifest(tmp, results, sources, renderer))
        counts = {split: dict(Counter(r.job.family for r in results if r.job.split == split)) for split in cfg.splits}
        print(f"rendered {len(results)} clips into {output}, by split and family: {counts}")
        print(f"manifest: {manifest}")
    if mixtures:
        listing = output / "mixtures.csv"
        atomic_write(listing, lambda tmp: _write_mixtures_csv(tmp, mixtures, sources))
        counts = dict(Counter(r.job.split for r in mixtures))
        print(f"rendered {len(mixtures)} mixtures into {output / 'mixtures'}, by split: {counts}")
        print(f"mixtures: {listing}")
    return output


def _write_manifest(tmp: Path, results: list[ClipResult], sources: dict[str, UsableSource], renderer: str) -> None:
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "label", "split", "family", "source", "bank", "program", "instrument"]
            + ["style", "tempo", "reverb", "chorus", "noise_snr_db", "room_rt60", "mic_db", "renderer"]
            + ["instruments", "accompaniment_sources", "accompaniment_db", "articulation"]
        )
        for r in results:
            kind = sources[r.job.source].kind
            backing = r.job.accompaniment
            writer.writerow(
                [r.path, r.job.label, r.job.split, r.job.family, r.job.source]
                + ["" if r.bank is None else r.bank, "" if r.program is None else r.program, r.instrument]
                + [r.style, r.tempo, r.reverb, r.chorus]
                + ["" if value is None else value for value in (r.noise_snr_db, r.room_rt60, r.mic_db)]
                + [{"soundfont": renderer, "recordings": RecordingPlayer.name}.get(kind, MultisampleRenderer.name)]
                # every instrument sounding, the clip's own first (amir-prepare's multi-hot targets)
                + [";".join([r.job.label, *(name for name, _, _ in backing)])]
                + [";".join(source for _, source, _ in backing), ";".join(str(level) for _, _, level in backing)]
                + [r.articulation]
            )


def _write_mixtures_csv(tmp: Path, mixtures: list[MixtureResult], sources: dict[str, UsableSource]) -> None:
    """One row a mixture: ``path,labels`` (the predominant classes, as amir-evaluate-recordings reads
    a manifest), then every instrument with its family, source and RMS level, ';'-separated in order."""
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "labels", "split", "instruments", "families", "sources", "level_db", "seconds", "noise_snr_db"]
        )
        for r in mixtures:
            job = r.job
            writer.writerow(
                [r.path, ";".join(job.labels[: job.predominant]), job.split, ";".join(job.labels)]
                + [";".join(sources[name].family for name in job.sources), ";".join(job.sources)]
                + [";".join(str(level) for level in job.levels_db), job.seconds]
                + ["" if r.noise_snr_db is None else r.noise_snr_db]
            )
