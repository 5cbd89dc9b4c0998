"""The audio front end shared by amir-prepare, amir-predict and amir-export.

decode (soundfile) -> mono -> resample with an anti-aliasing low-pass (torchaudio)
-> 3 s clips -> RMS gate -> mel spectrogram (torchaudio, librosa's defaults).

Files are read in blocks of whole clips, so a two-hour recording never sits in
memory at once. Each block is resampled with a margin of real neighbouring
audio on both sides that is then cut away, so block-wise resampling equals
resampling the whole file (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from amir_pl.core.errors import AmirError
from amir_pl.features.params import FeatureParams

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff", ".mp3")


class AudioError(AmirError):
    """A file that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe(path: str | Path) -> AudioInfo:
    """Read a file's header; AudioError if soundfile cannot read it or it holds no samples."""
    path = Path(path)
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioError(f"not readable audio ({_short(error)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("holds no samples")
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames))


def _short(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


@dataclass
class Block:
    """Consecutive clips of one file: waveforms at the target rate and their offsets."""

    clips: torch.Tensor  # (k, clip_samples) float32 mono
    offsets: list[float]  # seconds into the file of each clip
    nonfinite: int  # samples that were NaN or +-Inf in the decoded audio (set to 0)


def clip_count(info: AudioInfo, features: FeatureParams, hop_samples: int | None = None) -> int:
    """Whole windows of ``clip_samples`` every ``hop_samples`` (default: back to back) in the file.

    A shorter tail is dropped.
    """
    hop = hop_samples or features.clip_samples
    length = info.frames * features.sample_rate / info.sample_rate  # at the target rate
    if length + 1e-6 < features.clip_samples:
        return 0
    return int(math.floor((length - features.clip_samples) / hop + 1e-9)) + 1


# torchaudio's windowed-sinc resampler with a Kaiser window, 16 zero crossings and a low-pass at
# 0.945 x the lower Nyquist rate: closer to librosa's default (soxr_hq) than torchaudio's default
# (Hann, 6 crossings, roll-off 0.99, which lets more aliasing through) at a modest extra cost; more
# crossings buy little more fidelity for much more time (docs/performance.md, "Measurements behind the code").
RESAMPLING = {
    "lowpass_filter_width": 16,
    "rolloff": 0.945,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 8.555,
}


# Output steps computed per convolution step. torchaudio convolves with one output channel per
# output phase (new / gcd of them), so 44.1 -> 22.05 kHz (one phase) is a matrix product with a
# single column, which runs slowly. Regrouping the same kernel so that one step yields several
# consecutive outputs gives the product more columns: several times faster, bit-identical to
# torchaudio's (docs/performance.md, "Measurements behind the code").
_OUTPUTS_PER_STEP = 8


@dataclass(frozen=True)
class _Resampler:
    weight: torch.Tensor  # (block * phases, 1, taps + stride * (block - 1))
    width: int  # torchaudio's left padding
    stride: int  # input samples per output step (orig / gcd)
    phases: int  # outputs per step in torchaudio's kernel (new / gcd)
    block: int  # torchaudio steps per step here


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> _Resampler:
    """torchaudio's windowed-sinc kernel for ``orig -> new`` (RESAMPLING), regrouped into blocks of steps."""
    reference = torchaudio.transforms.Resample(orig, new, **RESAMPLING)
    stride, phases = orig // reference.gcd, new // reference.gcd
    block = max(1, _OUTPUTS_PER_STEP // phases)
    kernel = reference.kernel  # (phases, 1, taps): output phase j of a step reads taps inputs from step * stride
    taps = kernel.shape[-1]
    weight = kernel.new_zeros(block * phases, 1, taps + stride * (block - 1))
    for step in range(block):
        weight[step * phases : (step + 1) * phases, :, step * stride : step * stride + taps] = kernel
    return _Resampler(weight, reference.width, stride, phases, block)


def resample(waveform: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """``torchaudio.transforms.Resample(orig, new, **RESAMPLING)(waveform)``: the same kernel and
    the same sums, computed ``block`` output steps at a time (see ``_OUTPUTS_PER_STEP``)."""
    if orig == new:
        return waveform
    r = _resampler(orig, new)
    shape = waveform.shape
    rows = waveform.reshape(-1, shape[-1])
    length = rows.shape[-1]
    padded = torch.nn.functional.pad(rows, (r.width, r.width + r.stride * r.block))
    out = torch.nn.functional.conv1d(padded[:, None], r.weight, stride=r.stride * r.block)
    out = out.transpose(1, 2).reshape(rows.shape[0], -1)[:, : math.ceil(r.phases * length / r.stride)]
    return out.reshape(*shape[:-1], out.shape[-1])


def _margin(orig: int, new: int) -> int:
    """Input samples of real context on each side of a block: a multiple of orig/gcd, longer than the
    resampling kernel's half-width (lowpass_filter_width zero crossings of the lower rate)."""
    step = orig // math.gcd(orig, new)
    half_width = RESAMPLING["lowpass_filter_width"] * orig / (min(orig, new) * RESAMPLING["rolloff"])
    return step * math.ceil(2 * half_width / step)


def read_clips(
    info: AudioInfo,
    features: FeatureParams,
    first_clip: int = 0,
    n_clips: int | None = None,
    block_clips: int = 16,
    hop_samples: int | None = None,
    pad_short: bool = False,
) -> Iterator[Block]:
    """Yield the file's clips ``first_clip .. first_clip + n_clips`` in blocks, at the target rate.

    Clip ``k`` starts at ``k * hop_samples`` (default: clips back to back). Mono
    is the mean of the channels. Non-finite samples are set to 0 (and counted).
    ``pad_short``: a file shorter than one clip gives one clip, zero-padded at
    the end. Raises AudioError when decoding fails part-way.
    """
    orig, new = info.sample_rate, features.sample_rate
    hop = hop_samples or features.clip_samples
    total = clip_count(info, features, hop) or (1 if pad_short else 0)
    last = total if n_clips is None else min(total, first_clip + n_clips)
    margin = _margin(orig, new) if orig != new else 0
    try:
        with soundfile.SoundFile(str(info.path)) as handle:
            for start_clip in range(first_clip, last, block_clips):
                stop_clip = min(start_clip + block_clips, last)
                n = stop_clip - start_clip
                needed = (n - 1) * hop + features.clip_samples  # output samples covering these clips
                begin = round(start_clip * hop * orig / new)
                end = begin + round(needed * orig / new)
                audio, nonfinite = _read_mono(handle, begin - margin, end + margin, info.frames)
                waveform = torch.from_numpy(audio)
                if orig != new:
                    waveform = resample(waveform, orig, new)
                    waveform = waveform[margin * new // orig :]
                if waveform.numel() < needed:  # rounding at the very end of the file, or a padded short file
                    waveform = torch.nn.functional.pad(waveform, (0, needed - waveform.numel()))
                clips = waveform[:needed].unfold(0, features.clip_samples, hop)
                offsets = [c * hop / new for c in range(start_clip, stop_clip)]
                yield Block(clips, offsets, nonfinite)
    except AudioError:
        raise
    except Exception as error:
        raise AudioError(f"decoding failed ({_short(error)})") from None


def _read_mono(handle: soundfile.SoundFile, begin: int, end: int, frames: int) -> tuple[np.ndarray, int]:
    """Samples ``begin..end`` as float32 mono, zeros outside the file; and the count of non-finite samples."""
    out = np.zeros(end - begin, dtype=np.float32)
    lo, hi = max(begin, 0), min(end, frames)
    if hi > lo:
        handle.seek(lo)
        # 16-bit files are read as integers and scaled here (faster than libsndfile's float
        # conversion, and bit-identical to it: x / 32768, summed exactly, one division).
        as_int16 = handle.subtype == "PCM_16"
        data = handle.read(hi - lo, dtype="int16" if as_int16 else "float32", always_2d=True)
        if len(data) < hi - lo:
            raise AudioError(
                f"file ends after {(lo + len(data)) / handle.samplerate:.2f} s, "
                f"its header says {frames / handle.samplerate:.2f} s"
            )
        # The mean of the channels, summed column by column: numpy's mean over a short last axis
        # is several times slower than the whole rest of the front end.
        target = out[lo - begin : hi - begin]
        target[:] = data[:, 0]
        for channel in range(1, data.shape[1]):
            target += data[:, channel]
        scale = data.shape[1] * (32768 if as_int16 else 1)
        if scale != 1:
            target /= scale
    bad = ~np.isfinite(out)
    nonfinite = int(bad.sum())
    if nonfinite:
        out[bad] = 0.0
    return out, nonfinite


def frame_rms(clips: torch.Tensor, frame_length: int = 2048, hop_length: int = 512) -> torch.Tensor:
    """Mean over frames of each clip's frame RMS, as ``librosa.feature.rms(y).mean()`` (centred, zero-padded)."""
    padded = torch.nn.functional.pad(clips, (frame_length // 2, frame_length // 2))
    if frame_length % hop_length:
        energy = padded.unfold(-1, frame_length, hop_length).square().sum(dim=-1)
    else:  # a frame is whole hops: sum the hops' energies (each sample squared once, not once per frame)
        n_frames = 1 + (padded.shape[-1] - frame_length) // hop_length
        per_frame = frame_length // hop_length
        n_hops = n_frames + per_frame - 1
        hops = padded[..., : n_hops * hop_length].unflatten(-1, (n_hops, hop_length)).square().sum(dim=-1)
        energy = hops.unfold(-1, per_frame, 1).sum(dim=-1)
    return (energy / frame_length).sqrt().mean(dim=-1)


class MelFrontEnd(torch.nn.Module):
    """Waveform clips (k, clip_samples) -> mel spectrograms (k, n_mels, frames), as the dataset stores them.

    With the thesis's parameters this equals ``librosa.feature.melspectrogram(y=y, sr=22050)``:
    periodic Hann window, centred frames padded with zeros, |STFT|^2, Slaney mel
    scale and Slaney area normalisation. ``scale="db"`` applies
    ``10 log10(max(S, 1e-10))`` clipped at 80 dB below each clip's peak, as ``librosa.power_to_db``.
    """

    def __init__(self, features: FeatureParams):
        super().__init__()
        self.features = features
        # torchaudio's MelSpectrogram in its two parts, so that the power spectrum can be taken
        # as re^2 + im^2, faster than the |X|.pow(2) MelSpectrogram takes (same values to float
        # rounding; docs/performance.md, "Measurements behind the code").
        self.stft = torchaudio.transforms.Spectrogram(
            n_fft=features.n_fft, hop_length=features.hop_length, power=None, center=True, pad_mode="constant"
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=features.n_mels,
            sample_rate=features.sample_rate,
            f_min=features.f_min,
            f_max=features.f_max,
            n_stft=features.n_fft // 2 + 1,
            norm="slaney",
            mel_scale=features.mel_scale,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0) if features.scale == "db" else None

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        spec = self.stft(clips)
        if self.features.power == 2:
            spec = spec.real.square() + spec.imag.square()
        else:
            spec = spec.abs().pow(self.features.power)
        spec = self.mel_scale(spec)
        if self.to_db is not None:
            # (k, 1, mels, frames): AmplitudeToDB takes the 80 dB floor per item of the leading dimension.
            spec = self.to_db(spec.unsqueeze(1)).squeeze(1)
        return spec
