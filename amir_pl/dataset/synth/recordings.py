"""Recordings of one instrument (a solo track, a stem of a song) as a source: each clip a random excerpt
of them, where the other sources play composed phrases.

A source of this kind is a config node (conf/sources/<name>.yaml)::

    kind: recordings
    root: /usr/share/games/fretsonfire/data/songs
    instruments:                     # class -> the recording sets that play it (one drawn per clip)
      electric_guitar:
        - {name: muldjord, files: "muldjord/*/guitar.ogg"}   # glob patterns under root

Each clip draws a set, a file of it and a start, all from the clip's generator. A file is decoded,
mixed to mono and resampled to the output rate once per worker process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from amir_pl.core.errors import AmirError
from amir_pl.features.audio import resample


@dataclass(frozen=True)
class RecordingSet:
    """One named set of recordings of an instrument: its files, in a fixed order."""

    name: str
    root: str
    files: tuple[str, ...]  # relative to root


def find_recordings(root: Path, spec: dict) -> RecordingSet:
    """The recording set a config entry names; FileNotFoundError when its pattern matches no file."""
    pattern = str(spec.get("files") or "")
    if not pattern:
        raise AmirError(f"recordings {spec.get('name')!r}: give files, a glob pattern under {root}")
    files = tuple(sorted(str(path.relative_to(root)) for path in root.glob(pattern) if path.is_file()))
    if not files:
        raise FileNotFoundError(f"{root}/{pattern}")
    return RecordingSet(str(spec["name"]), str(root), files)


class RecordingPlayer:
    """Excerpts of recordings at the output rate; decoded files are kept for the worker's life."""

    name = "recording"

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.decoded: dict[str, np.ndarray] = {}

    def _load(self, path: str) -> np.ndarray:
        if path not in self.decoded:
            try:
                data, rate = soundfile.read(path, dtype="float32", always_2d=True)
            except Exception as error:
                raise AmirError(f"{path}: cannot be decoded ({error})") from None
            mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
            self.decoded[path] = resample(mono, rate, self.sample_rate).numpy()
        return self.decoded[path]

    def excerpt(self, recordings: RecordingSet, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``frames`` samples from a drawn file of ``recordings`` at a drawn start, and what was played."""
        relative = recordings.files[int(rng.integers(len(recordings.files)))]
        audio = self._load(str(Path(recordings.root) / relative))
        if len(audio) < frames:
            raise AmirError(
                f"{Path(recordings.root) / relative}: shorter than a clip ({len(audio)} < {frames} samples)"
            )
        start = int(rng.integers(len(audio) - frames + 1))
        return audio[
            start : start + frames
        ].copy(), f"{recordings.name}: {relative} at {start / self.sample_rate:.2f} s"
