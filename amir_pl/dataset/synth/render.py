"""The built-in dataset (amir-synth): solo phrases rendered offline from General MIDI soundfonts.

    amir-synth output=data/synth clips_per_class=150
    amir-synth output=data/synth_b seed=2 '~splits.train' '~splits.val' 'splits.test.fonts=[FluidR3,MuseScore]'

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
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write
from amir_pl.core.labels import CLASS_NAMES
from amir_pl.dataset.synth.phrases import DRUM_CHANNEL, INSTRUMENTS, Phrase, compose_phrase
from amir_pl.dataset.synth.renderers import FluidSynthRenderer, TinySoundFontRenderer, available_renderer, fallback_font
from amir_pl.features.audio import frame_rms

log = logging.getLogger(__name__)


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
