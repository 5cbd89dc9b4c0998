"""The schemas of amir-prepare's and amir-synth's configs: types and choices, checked by OmegaConf
while Hydra composes (``dtype=float8`` is refused there, naming the option and the choices).
The values and their comments are in conf/prepare.yaml and conf/synth.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from amir_pl.features.params import FeatureConfig


class Dtype(StrEnum):
    float16 = "float16"
    float32 = "float32"


@dataclass
class PrepareConfig:
    task_name: str = MISSING
    source: str = MISSING
    output: str = MISSING
    overwrite: bool = MISSING
    classes: list[str] = MISSING
    split_fractions: dict[str, float] = MISSING
    family_splits: dict[str, list[str]] = MISSING
    balance: bool = MISSING
    seed: int = MISSING
    num_workers: int = MISSING
    clips_per_task: int = MISSING
    block_clips: int = MISSING
    progress: bool = MISSING
    rms_threshold: float = MISSING
    dtype: Dtype = MISSING
    chunk_clips: int = MISSING
    features: FeatureConfig = field(default_factory=FeatureConfig)
    paths: Any = MISSING


class Renderer(StrEnum):
    auto = "auto"  # fluidsynth if present, else tinysoundfont
    fluidsynth = "fluidsynth"
    tinysoundfont = "tinysoundfont"


class SourceKind(StrEnum):
    soundfont = "soundfont"  # a General MIDI soundfont file, played by the soundfont renderer
    samples = "samples"  # a sample library, played by the multisample renderer
    recordings = "recordings"  # recordings of one instrument, each clip an excerpt (dataset/synth/recordings.py)


@dataclass
class Source:
    family: str = MISSING  # sources that share recordings share a family (FluidR3 and MuseScore: fluid)
    kind: SourceKind = MISSING
    install: str = MISSING  # how to install it, named when it is missing
    path: str | None = None  # soundfont: the .sf2/.sf3 file
    root: str | None = None  # samples, recordings: the library's folder
    # samples: class -> instruments (amir_pl/dataset/synth/samples.py); recordings: class -> sets of files
    # (amir_pl/dataset/synth/recordings.py)
    instruments: Any = None
    # soundfont: class -> its General MIDI programs in place of the defaults ([] leaves the class out); optional:
    # skipped with one line when not installed, never replaced by the fallback font
    programs: Any = None
    optional: bool = False


@dataclass
class SynthSplit:
    families: list[str] = MISSING
    fraction: float = MISSING


@dataclass
class SynthMixtures:
    count: int = MISSING  # mixtures per split named in `splits`; 0: none
    splits: list[str] = MISSING
    instruments: list[int] = MISSING  # [low, high] instruments per mixture
    predominant: list[int] = MISSING  # [low, high] of them louder than the rest
    seconds: list[float] = MISSING
    background_db: list[float] = MISSING
    stems: bool = MISSING


@dataclass
class SynthAccompaniment:
    probability: float = MISSING  # share of the clips of `splits` played over accompaniment; 0: none
    splits: list[str] = MISSING
    instruments: list[int] = MISSING  # [low, high] accompanying instruments per such clip
    level_db: list[float] = MISSING  # [low, high] RMS level of each against the clip's instrument (< 0)
    rhythm_probability: float = MISSING  # chance that drums, and separately bass, accompany
    stems: bool = MISSING


@dataclass
class SynthFewSamples:
    probability: float = MISSING  # share of the sample-library parts of `splits` played from few of their notes
    samples: list[int] = MISSING  # [low, high] sampled notes kept per such part
    splits: list[str] = MISSING


@dataclass
class SynthArticulation:
    probability: float = MISSING  # share of the melodic soundfont parts of `splits` played with drawn offsets
    attack_timecents: list[float] = MISSING  # [low, high] offset of the attack time (1200: twice as long)
    release_timecents: list[float] = MISSING  # [low, high] offset of the release time
    vibrato_cents: list[float] = MISSING  # [low, high] vibrato depth added, cents
    vibrato_rate_cents: list[float] = MISSING  # [low, high] offset of the vibrato rate (1200: twice as fast)
    splits: list[str] = MISSING


@dataclass
class SynthConfig:
    task_name: str = MISSING
    output: str = MISSING
    overwrite: bool = MISSING
    clips_per_class: int = MISSING
    classes: list[str] = MISSING
    seed: int = MISSING
    num_workers: int = MISSING
    renderer: Renderer = MISSING
    allow_fallback_font: bool = MISSING
    progress: bool = MISSING
    sample_rate: int = MISSING
    clip_seconds: float = MISSING
    effects_probability: float = MISSING
    noise_probability: float = MISSING
    noise_snr_db: list[float] = MISSING
    peak_range: list[float] = MISSING
    min_rms: float = MISSING
    room_probability: float = MISSING
    room_rt60: list[float] = MISSING
    mic_probability: float = MISSING
    mic_db: float = MISSING
    room_splits: list[str] = MISSING
    few_samples: SynthFewSamples = field(default_factory=SynthFewSamples)
    articulation: SynthArticulation = field(default_factory=SynthArticulation)
    accompaniment: SynthAccompaniment = field(default_factory=SynthAccompaniment)
    mixtures: SynthMixtures = field(default_factory=SynthMixtures)
    sources_dir: str = MISSING
    sources: dict[str, Source] = MISSING
    splits: dict[str, SynthSplit] = MISSING
    paths: Any = MISSING
