"""Augmentation of training batches on the device that trains (GPU or CPU), for recognition that
transfers to recordings from other sources: random EQ curves and gain, low-pass filters, time shift,
time stretch, pitch shift by warping the mel axis, Freq-MixStyle, mixup, SpecAugment masks, and mixing
clips of the batch into polyphony (an instrument over others, for recognising the predominant ones in
music).

Chosen with ``augment=<name>`` (conf/augment/); ``augment=none`` (the default, and what
``experiment=paper`` keeps) builds nothing. The module applies it at the start of
``training_step``, on the device that trains. Draws come from torch's generator on the batch's
device, which ``amir-train`` seeds (``seed``; each DDP rank its own): the same seed gives the same
batches, and a resumed run the batches the uninterrupted run would have had.

Gain, EQ, the low-pass, shifts, the stretch, Freq-MixStyle and masks work on decibels (a ``power``
dataset is converted and back); mixup and the batch mixing add power spectra, as mixing the recordings
would.

Targets: class indices pass through while nothing mixes (so ``augment=transfer`` trains exactly as
before); mixup gives class probabilities, and batch mixing a target per class in [0, 1] (1 for the
clip's own classes and for every clip mixed in at a predominant level, ``mix_background_weight``
for one mixed in below it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from amir_pl.core.errors import AmirError

AMIN = 1e-10  # the floor of the decibel conversion, as torchaudio's AmplitudeToDB
LOWPASS_DB_PER_OCTAVE = 60.0  # the slope of the low-pass augmentation above its cutoff


def to_db(x: torch.Tensor, scale: str) -> torch.Tensor:
    """Mels as stored (``scale`` power or db) -> decibels, float32."""
    return x.float() if scale == "db" else 10 * torch.log10(x.float().clamp_min(AMIN))


def from_db(db: torch.Tensor, scale: str) -> torch.Tensor:
    """Decibels -> mels in ``scale`` (power or db), the inverse of ``to_db``."""
    return db if scale == "db" else torch.pow(10.0, db / 10)


def mel_centres(features: dict) -> torch.Tensor:
    """Centre frequency (Hz) of each mel band: the centroid of its filter in torchaudio's filterbank."""
    n_freqs = int(features["n_fft"]) // 2 + 1
    bank = torchaudio.functional.melscale_fbanks(
        n_freqs,
        float(features["f_min"]),
        float(features["f_max"]),
        int(features["n_mels"]),
        int(features["sample_rate"]),
        norm="slaney" if features.get("mel_scale", "slaney") == "slaney" else None,
        mel_scale=str(features.get("mel_scale", "slaney")),
    )
    freqs = torch.linspace(0, int(features["sample_rate"]) / 2, n_freqs)
    return (bank * freqs[:, None]).sum(0) / bank.sum(0).clamp_min(1e-12)


def band_interpolation(centres: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For frequencies ``wanted`` (any shape), the band above each (``upper``; ``upper - 1`` below it) among
    the increasing band ``centres``, and the weight of that upper band in a linear interpolation between
    the two (clamped to [0, 1]: the edge band's value beyond the first and last centres)."""
    upper = torch.searchsorted(centres, wanted.contiguous()).clamp(1, len(centres) - 1)
    low_f, high_f = centres[upper - 1], centres[upper]
    return upper, ((wanted - low_f) / (high_f - low_f)).clamp(0, 1)


def warp_mel_axis(db: torch.Tensor, centres: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """``db`` (batch, n_mels, frames) in decibels, ``semitones`` (batch, 1): band m of each clip takes the
    value the clip had at centre(m) / 2^(s/12), linearly between bands, as a note s semitones up would.
    The training augmentation draws ``semitones``; test-time augmentation (amir-predict) fixes them."""
    frames = db.shape[2]
    upper, weight = band_interpolation(centres, centres[None, :] / torch.pow(2.0, semitones / 12))
    below = db.gather(1, (upper - 1).unsqueeze(-1).expand(-1, -1, frames))
    above = db.gather(1, upper.unsqueeze(-1).expand(-1, -1, frames))
    return below + weight.unsqueeze(-1) * (above - below)


class BatchAugment(nn.Module):
    """Each option at 0 is off. ``scale`` and ``features`` (the dataset file's) come from the module."""

    def __init__(
        self,
        scale: str,
        features: dict,
        num_classes: int,
        gain_db: float = 0.0,  # each clip's level moves by up to +-gain_db
        eq_db: float = 0.0,  # a smooth random curve over the mel bands, up to +-eq_db
        eq_points: int = 6,  # control points of the curve
        lowpass_p: float = 0.0,  # chance a clip loses its top: a low-pass at a cutoff drawn above lowpass_min_hz
        lowpass_min_hz: float = 3000.0,
        time_shift: float = 0.0,  # circular shift by up to this fraction of the clip
        time_stretch: float = 0.0,  # time axis played up to 1 + this times faster or slower (wrapping around)
        pitch_semitones: float = 0.0,  # mel axis warped by up to +-this many semitones
        mixstyle_p: float = 0.0,  # chance a clip's per-band statistics are mixed with another's
        mixstyle_alpha: float = 0.3,
        mixup_alpha: float = 0.0,  # mixup weight ~ Beta(alpha, alpha); targets become soft
        freq_masks: int = 0,  # SpecAugment: this many masks of up to freq_mask_width bands
        freq_mask_width: int = 0,
        time_masks: int = 0,
        time_mask_width: int = 0,
        mix_probability: float = 0.0,  # chance a clip gets 1..mix_max_clips other clips of the batch mixed in
        mix_max_clips: int = 2,
        mix_level_db: tuple[float, float] = (-18.0, 0.0),  # each one's level against the clip's (mean power)
        mix_predominant_db: float = -6.0,  # one mixed in at or above this level is predominant too: target 1
        mix_background_weight: float = 0.0,  # the target of one mixed in below it
    ):
        super().__init__()
        if scale not in ("power", "db"):
            raise AmirError(f"augment: dataset scale {scale!r} is neither 'power' nor 'db'")
        self.scale = scale
        self.num_classes = num_classes
        self.gain_db, self.eq_db, self.eq_points = float(gain_db), float(eq_db), int(eq_points)
        self.time_shift, self.pitch_semitones = float(time_shift), float(pitch_semitones)
        self.register_buffer("centres", mel_centres(features), persistent=False)
        top = float(self.centres[-1])
        if not 0.0 <= lowpass_p <= 1.0 or (lowpass_p and not 0 < lowpass_min_hz < top):
            raise AmirError(
                f"augment.lowpass_p={lowpass_p}, lowpass_min_hz={lowpass_min_hz}: give a chance in [0, 1] and a "
                f"lowest cutoff between 0 and the top mel band's centre, {top:.0f} Hz"
            )
        self.lowpass_p, self.lowpass_min_hz = float(lowpass_p), float(lowpass_min_hz)
        self.lowpass_top_hz = top  # a float here: reading it from a GPU buffer every step would stall
        if time_stretch < 0:
            raise AmirError(
                f"augment.time_stretch={time_stretch}: give 0 (off) or more (0.25: up to 1.25x faster or slower)"
            )
        self.time_stretch = float(time_stretch)
        self.mixstyle_p, self.mixstyle_alpha = float(mixstyle_p), float(mixstyle_alpha)
        self.mixup_alpha = float(mixup_alpha)
        low, high = (float(v) for v in mix_level_db)
        if mix_probability and mixup_alpha:
            raise AmirError("augment: mixup_alpha and mix_probability both mix clips; choose one (set the other to 0)")
        if not 0.0 <= mix_probability <= 1.0 or (mix_probability and int(mix_max_clips) < 1):
            raise AmirError(
                f"augment.mix_probability={mix_probability}, mix_max_clips={mix_max_clips}: give a chance in "
                "[0, 1] and at least 1 clip to mix in"
            )
        if low > high or high > 0:
            raise AmirError(
                f"augment.mix_level_db={[low, high]}: give [low, high] with low <= high <= 0 (dB against the "
                "clip: the clip stays the loudest)"
            )
        if not 0.0 <= mix_background_weight <= 1.0:
            raise AmirError(f"augment.mix_background_weight={mix_background_weight}: give a target in [0, 1]")
        self.mix_probability, self.mix_max_clips = float(mix_probability), int(mix_max_clips)
        self.mix_level_db, self.mix_predominant_db = (low, high), float(mix_predominant_db)
        self.mix_background_weight = float(mix_background_weight)
        self.freq_masks = nn.ModuleList(
            torchaudio.transforms.FrequencyMasking(freq_mask_width, iid_masks=True) for _ in range(int(freq_masks))
        )
        self.time_masks = nn.ModuleList(
            torchaudio.transforms.TimeMasking(time_mask_width, iid_masks=True) for _ in range(int(time_masks))
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (batch, n_mels, frames) as stored, ``y`` class indices or (batch, classes) targets in
        [0, 1] -> augmented ``x`` and targets: class indices when nothing mixes, else class
        probabilities (mixup) or per-class targets (batch mixing)."""
        db = to_db(x, self.scale)
        if self.gain_db or self.eq_db:
            db = db + self._level(db)
        if self.pitch_semitones:
            db = self._pitch_shift(db)
        if self.lowpass_p:
            db = self._lowpass(db)
        if self.time_stretch:
            db = self._time_stretch(db)
        if self.time_shift:
            db = self._time_shift(db)
        if self.mixstyle_p:
            db = self._mixstyle(db)
        target = y
        if self.mixup_alpha:
            db, target = self._mixup(db, y)
        if self.mix_probability:
            db, target = self._mix_batch(db, y)
        if len(self.freq_masks) or len(self.time_masks):
            floor = db.amin(dim=(1, 2), keepdim=True)
            shifted = (db - floor).unsqueeze(1)  # masks set 0, the clip's own floor
            for mask in (*self.freq_masks, *self.time_masks):
                shifted = mask(shifted)
            db = shifted.squeeze(1) + floor
        return from_db(db, self.scale), target

    def _uniform(self, shape, bound: float, device) -> torch.Tensor:
        return (torch.rand(shape, device=device) * 2 - 1) * bound

    def _level(self, db: torch.Tensor) -> torch.Tensor:
        batch, bands, _ = db.shape
        offset = self._uniform((batch, 1, 1), self.gain_db, db.device)
        if self.eq_db:
            points = self._uniform((batch, 1, self.eq_points), self.eq_db, db.device)
            curve = F.interpolate(points, size=bands, mode="linear", align_corners=True)
            offset = offset + curve.transpose(1, 2)
        return offset

    def _pitch_shift(self, db: torch.Tensor) -> torch.Tensor:
        semitones = self._uniform((db.shape[0], 1), self.pitch_semitones, db.device)
        return warp_mel_axis(db, self.centres, semitones)

    def _lowpass(self, db: torch.Tensor) -> torch.Tensor:
        """With ``lowpass_p``, a clip is cut above a frequency drawn log-uniformly between ``lowpass_min_hz`` and
        the top band, by LOWPASS_DB_PER_OCTAVE above it, down to no lower than the clip's own floor. A sampled note
        carries nothing above half its sample's rate (sound fonts store many at 11-32 kHz), so how far up a
        note reaches tells the sample set, not the instrument."""
        batch = db.shape[0]
        low, high = math.log(self.lowpass_min_hz), math.log(self.lowpass_top_hz)
        cutoff = torch.exp(low + torch.rand((batch, 1), device=db.device) * (high - low))
        octaves = torch.log2(self.centres[None, :] / cutoff).clamp_min(0)
        chosen = torch.rand((batch, 1), device=db.device) < self.lowpass_p
        cut = torch.where(chosen, octaves * LOWPASS_DB_PER_OCTAVE, 0.0).unsqueeze(-1)
        return torch.maximum(db - cut, db.amin(dim=(1, 2), keepdim=True))

    def _time_shift(self, db: torch.Tensor) -> torch.Tensor:
        batch, bands, frames = db.shape
        limit = int(self.time_shift * frames)
        shift = torch.randint(-limit, limit + 1, (batch, 1, 1), device=db.device)
        index = (torch.arange(frames, device=db.device).view(1, 1, -1) - shift) % frames
        return db.gather(2, index.expand(batch, bands, frames))

    def _time_stretch(self, db: torch.Tensor) -> torch.Tensor:
        """Each clip played at a rate drawn log-uniformly in [1 / (1 + s), 1 + s]: frame t takes the value at
        t * rate, linearly between frames and wrapping around the clip (so a faster clip repeats its start, as
        the circular time shift does). Notes' attacks and decays, a cue of timbre that differs between sample
        sets, get shorter or longer; the pitch stays."""
        batch, bands, frames = db.shape
        rate = torch.exp(self._uniform((batch, 1), math.log1p(self.time_stretch), db.device))
        position = (torch.arange(frames, device=db.device)[None, :] * rate) % frames
        before = position.floor().long()
        after = (before + 1) % frames
        weight = (position - before).unsqueeze(1)
        first = db.gather(2, before.unsqueeze(1).expand(-1, bands, -1))
        second = db.gather(2, after.unsqueeze(1).expand(-1, bands, -1))
        return first + weight * (second - first)

    def _beta(self, alpha: float, shape, device) -> torch.Tensor:
        """Beta(alpha, alpha) drawn on the device (a draw on the host and a copy would stall a GPU)."""
        concentration = torch.full(shape, alpha, device=device)
        return torch.distributions.Beta(concentration, concentration).sample()

    def _mixstyle(self, db: torch.Tensor) -> torch.Tensor:
        """Freq-MixStyle: per-band mean and deviation over time, mixed with another clip's."""
        batch = db.shape[0]
        mean = db.mean(dim=2, keepdim=True)
        std = (db.var(dim=2, keepdim=True) + 1e-6).sqrt()
        weight = self._beta(self.mixstyle_alpha, (batch, 1, 1), db.device)
        other = torch.randperm(batch, device=db.device)
        mixed = (db - mean) / std * (weight * std + (1 - weight) * std[other]) + (
            weight * mean + (1 - weight) * mean[other]
        )
        chosen = torch.rand((batch, 1, 1), device=db.device) < self.mixstyle_p
        return torch.where(chosen, mixed, db)

    def _as_targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.float() if y.ndim == 2 else F.one_hot(y, self.num_classes).float()

    def _mixup(self, db: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = db.shape[0]
        weight = self._beta(self.mixup_alpha, (batch,), db.device)
        weight = torch.maximum(weight, 1 - weight)  # the clip keeps the larger share
        other = torch.randperm(batch, device=db.device)
        power = torch.pow(10.0, db / 10)
        mixed = weight.view(-1, 1, 1) * power + (1 - weight.view(-1, 1, 1)) * power[other]
        onehot = self._as_targets(y)
        target = weight[:, None] * onehot + (1 - weight[:, None]) * onehot[other]
        return 10 * torch.log10(mixed.clamp_min(AMIN)), target

    def _mix_batch(self, db: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clip, with ``mix_probability``, gets 1..``mix_max_clips`` other clips of the batch (distinct) added in
        power, each at a level drawn in ``mix_level_db`` against the clip's mean power (so the clip
        stays the loudest). Its target per class is the largest of its own and of each added clip's
        times 1 (at or above ``mix_predominant_db``) or ``mix_background_weight`` (below)."""
        batch, device = db.shape[0], db.device
        power = torch.pow(10.0, db / 10)
        level = power.mean(dim=(1, 2)).clamp_min(AMIN)  # (batch,)
        target = self._as_targets(y)
        own = target
        mixed = power
        chosen = torch.rand(batch, device=device) < self.mix_probability
        count = torch.randint(1, self.mix_max_clips + 1, (batch,), device=device)
        low, high = self.mix_level_db
        # the others of a clip: the next ones after it in a shuffled order of the batch, so all distinct
        order = torch.randperm(batch, device=device)
        position = torch.argsort(order)
        for slot in range(self.mix_max_clips):
            other = order[(position + slot + 1) % batch]
            active = chosen & (count > slot) & (other != torch.arange(batch, device=device))
            level_db = low + torch.rand(batch, device=device) * (high - low)
            gain = torch.where(active, torch.pow(10.0, level_db / 10) * level / level[other], 0.0)
            mixed = mixed + gain.view(-1, 1, 1) * power[other]
            weight = torch.where(level_db >= self.mix_predominant_db, 1.0, self.mix_background_weight)
            target = torch.maximum(target, torch.where(active, weight, 0.0)[:, None] * own[other])
        return 10 * torch.log10(mixed.clamp_min(AMIN)), target
