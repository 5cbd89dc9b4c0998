"""Recordings of one instrument (a solo track, a stem of a song) as a source: each clip a random excerpt
of them, where the other sources play composed phrases.

A source of this kind is a config node (conf/sources/<name>.yaml)::

    kind: recordings
    root: /usr/share/games/fretsonfire/data/songs
    instruments:                     # class -> the recording sets that play it (one drawn per clip)
      electric_guitar:
        - {name: muldjord, files: "muldjord/*/guitar.ogg"}   # glob patterns under root

Each clip draws a set, a file of it and a start, all from the clip's generator; an excerpt more than
``QUIET_DB`` below its file's RMS (a pause, a fade-out) counts as silent and is drawn again. Files
shorter than the longest part asked of them are left out (with one line) when the source is found. A
file is decoded, mixed to mono and resampled to the output rate once per worker process and kept
there: about 5 MB a minute of recordings, per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from amir_pl.core.errors import AmirError
from amir_pl.features.audio import resample

QUIET_DB = 30.0  # an excerpt this far below its file's RMS is a pause, not the instrument


@dataclass(frozen=True)
class RecordingSet:
    """One named set of recordings of an instrument: its files, in a fixed order."""

    name: str
    root: str
    files: tuple[str, ...]  # relative to root


def find_recordings(root: Path, spec: dict, min_seconds: float = 0.0) -> tuple[RecordingSet, list[str]]:
    """The recording set a config entry names, without its files shorter than ``min_seconds`` (returned
    too, to be named); FileNotFoundError when its pattern matches no file long enough."""
    pattern = str(spec.get("files") or "")
    if not pattern:
        raise AmirError(f"recordings {spec.get('name')!r}: give files, a glob pattern under {root}")
    try:
        matched = sorted(str(path.relative_to(root)) for path in root.glob(pattern) if path.is_file())
    except (NotImplementedError, ValueError) as error:
        raise AmirError(
            f"recordings {spec.get('name')!r}: files={pattern!r} is not a pattern under root ({error})"
        ) from None
    short = [name for name in matched if _seconds(root / name) < min_seconds]
    files = tuple(name for name in matched if name not in short)
    if not files:
        longer = f" ({len(short)} files shorter than {min_seconds} s)" if short else ""
        raise FileNotFoundError(f"{root}/{pattern}{longer}")
    return RecordingSet(str(spec["name"]), str(root), files), short


def _seconds(path: Path) -> float:
    try:
        return soundfile.info(str(path)).duration
    except Exception as error:
        raise AmirError(
            f"{path}: not an audio file soundfile reads ({error}); narrow the source's files pattern"
        ) from None


class RecordingPlayer:
    """Excerpts of recordings at the output rate; decoded files are kept for the worker's life."""

    name = "recording"

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.decoded: dict[str, tuple[np.ndarray, float]] = {}

    def _load(self, path: str) -> tuple[np.ndarray, float]:
        """The file at the output rate, and its RMS."""
        if path not in self.decoded:
            try:
                data, rate = soundfile.read(path, dtype="float32", always_2d=True)
            except Exception as error:
                raise AmirError(f"{path}: cannot be decoded ({error})") from None
            mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
            audio = resample(mono, rate, self.sample_rate).numpy()
            self.decoded[path] = (audio, float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))
        return self.decoded[path]

    def excerpt(self, recordings: RecordingSet, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``frames`` samples of a drawn file of ``recordings`` from a drawn start (all zero where the
        excerpt is ``QUIET_DB`` below its file: silent, to be drawn again), and what was played."""
        relative = recordings.files[int(rng.integers(len(recordings.files)))]
        path = Path(recordings.root) / relative
        audio, file_rms = self._load(str(path))
        if len(audio) < frames:
            raise AmirError(f"{path}: shorter than the part asked of it ({len(audio)} < {frames} samples)")
        start = int(rng.integers(len(audio) - frames + 1))
        excerpt = audio[start : start + frames].copy()
        if np.sqrt(np.mean(excerpt.astype(np.float64) ** 2)) < file_rms * 10 ** (-QUIET_DB / 20):
            excerpt[:] = 0.0
        return excerpt, f"{recordings.name}: {relative} at {start / self.sample_rate:.2f} s"
