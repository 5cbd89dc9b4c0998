"""The audio front end shared by amir-prepare and amir-predict.

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

from amir_pl.cli import AmirError
from amir_pl.dataset_file import FeatureParams

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
# (Hann, 6 crossings, roll-off 0.99, which lets more aliasing through) at about 1.6x its cost;
# 64 crossings halve the remaining difference again at twice the cost (README, "Fidelity").
RESAMPLING = {
    "lowpass_filter_width": 16,
    "rolloff": 0.945,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 8.555,
}


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new, **RESAMPLING)


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
                    waveform = _resampler(orig, new)(waveform)
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
        data = handle.read(hi - lo, dtype="float32", always_2d=True)
        if len(data) < hi - lo:
            raise AudioError(f"file ends after {(lo + len(data)) / handle.samplerate:.2f} s, "
                             f"its header says {frames / handle.samplerate:.2f} s")
        # The mean of the channels, summed column by column: numpy's mean over a short last axis
        # is several times slower than the whole rest of the front end.
        target = out[lo - begin : hi - begin]
        target[:] = data[:, 0]
        for channel in range(1, data.shape[1]):
            target += data[:, channel]
        if data.shape[1] > 1:
            target /= data.shape[1]
    bad = ~np.isfinite(out)
    nonfinite = int(bad.sum())
    if nonfinite:
        out[bad] = 0.0
    return out, nonfinite


def frame_rms(clips: torch.Tensor, frame_length: int = 2048, hop_length: int = 512) -> torch.Tensor:
    """Mean over frames of each clip's frame RMS, as ``librosa.feature.rms(y).mean()`` (centred, zero-padded)."""
    padded = torch.nn.functional.pad(clips, (frame_length // 2, frame_length // 2))
    frames = padded.unfold(-1, frame_length, hop_length)
    return frames.pow(2).mean(dim=-1).sqrt().mean(dim=-1)


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
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=features.sample_rate,
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            f_min=features.f_min,
            f_max=features.f_max,
            n_mels=features.n_mels,
            power=features.power,
            center=True,
            pad_mode="constant",
            norm="slaney",
            mel_scale=features.mel_scale,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0) if features.scale == "db" else None

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        spec = self.mel(clips)
        if self.to_db is not None:
            # (k, 1, mels, frames): AmplitudeToDB takes the 80 dB floor per item of the leading dimension.
            spec = self.to_db(spec.unsqueeze(1)).squeeze(1)
        return spec
