"""How clips become features: ``FeatureParams`` (stored in every dataset file and checkpoint), the
``features:`` config node that builds it, and the silence gate.

The thesis's values are ``FeatureParams``'s defaults (librosa's, at 22,050 Hz, 3 s clips -> 128 x 130);
the config schema takes its defaults from there, so they are written down once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum

from amir_pl.core.errors import AmirError


@dataclass(frozen=True)
class FeatureParams:
    """How the clips were computed; the thesis's values are the defaults (librosa's)."""

    sample_rate: int = 22050
    clip_samples: int = 66150
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 11025.0
    power: float = 2.0
    scale: str = "power"  # "power" (the thesis as run) or "db"
    mel_scale: str = "slaney"

    @property
    def frames(self) -> int:
        """STFT frames of one centred clip: 1 + clip_samples // hop_length (130 for the thesis)."""
        return 1 + self.clip_samples // self.hop_length

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, attrs) -> FeatureParams:
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for name, type_name in types.items():
            value = attrs[name]
            value = value.decode() if isinstance(value, bytes) else value
            values[name] = {"int": int, "float": float, "str": str}[type_name](value)
        return cls(**values)


FEATURE_ATTRS = tuple(f.name for f in fields(FeatureParams))
THESIS = FeatureParams()


class Scale(StrEnum):
    power = "power"  # linear mel power, what the thesis's code fed the net
    db = "db"  # 10 log10, floored 80 dB under each clip's peak (librosa.power_to_db)


class MelScale(StrEnum):
    slaney = "slaney"
    htk = "htk"


@dataclass
class FeatureConfig:
    """The ``features:`` node of amir-prepare (schema: OmegaConf checks types and choices)."""

    _target_: str = "amir_pl.features.params.feature_params"
    sample_rate: int = THESIS.sample_rate
    clip_seconds: float = THESIS.clip_samples / THESIS.sample_rate
    n_fft: int = THESIS.n_fft
    hop_length: int = THESIS.hop_length
    n_mels: int = THESIS.n_mels
    f_min: float = THESIS.f_min
    f_max: float | None = None  # null: sample_rate / 2
    power: float = THESIS.power
    scale: Scale = Scale(THESIS.scale)
    mel_scale: MelScale = MelScale(THESIS.mel_scale)


def feature_params(
    sample_rate: int,
    clip_seconds: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    f_min: float,
    f_max: float | None,
    power: float,
    scale: Scale | str,
    mel_scale: MelScale | str,
) -> FeatureParams:
    """``FeatureParams`` from the ``features:`` config node (seconds -> samples, f_max null -> Nyquist)."""
    if sample_rate <= 0 or clip_seconds <= 0 or n_fft <= 0 or hop_length <= 0 or n_mels <= 0:
        raise AmirError(
            f"features: sample_rate={sample_rate}, clip_seconds={clip_seconds}, n_fft={n_fft}, "
            f"hop_length={hop_length} and n_mels={n_mels} must all be positive"
        )
    return FeatureParams(
        sample_rate=sample_rate,
        clip_samples=round(clip_seconds * sample_rate),
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        f_min=f_min,
        f_max=float(f_max if f_max is not None else sample_rate / 2),
        power=power,
        scale=Scale(scale).value,
        mel_scale=MelScale(mel_scale).value,
    )


DEFAULT_RMS_THRESHOLD = 0.01  # the thesis's silence gate


def silence_gate(override, trained_features) -> float:
    """The silence gate to apply: ``override`` if given, else the one the checkpoint's training data
    passed (``features["rms_threshold"]``), else the thesis's 0.01 (checkpoints from before it was stored)."""
    if override is not None:
        return float(override)
    stored = (trained_features or {}).get("rms_threshold")
    return float(stored) if stored is not None else DEFAULT_RMS_THRESHOLD
