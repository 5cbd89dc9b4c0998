"""The one worker pipeline of amir-prepare and amir-predict: files -> clips -> RMS gate -> mels.

Files are cut into tasks of a bounded number of clips, so a long recording is spread over the
workers and never sits in memory at once. Tasks run in a pool of forked processes, one torch
thread each, and come back in task order, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from amir_pl.features.audio import AudioError, AudioInfo, MelFrontEnd, clip_count, frame_rms, read_clips
from amir_pl.features.params import FeatureParams

FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ClipSettings:
    """What every task shares."""

    features: FeatureParams
    rms_threshold: float  # a clip whose mean frame RMS is at or under this is counted as silent, not kept
    hop_samples: int | None = None  # clip k starts at k * hop_samples; None: clips back to back
    pad_short: bool = False  # a file shorter than one clip gives one zero-padded clip
    dtype: str = "float32"  # of the mels handed back (float16: values beyond its range are clipped and counted)
    block_clips: int = 16  # clips decoded and resampled at once (memory per worker)


@dataclass(frozen=True)
class ClipTask:
    """Clips ``first .. first + count`` of one file."""

    file_index: int
    info: AudioInfo
    first: int
    count: int
    file_clips: int  # clips in the whole file (1 for a padded short file)

    @property
    def ends_file(self) -> bool:
        return self.first + self.count >= self.file_clips


@dataclass
class TaskClips:
    """What one task gave: the mels of its sounding clips and what happened to the rest."""

    task: ClipTask
    mels: np.ndarray | None  # (sounding clips, n_mels, frames) in the settings' dtype; None if none
    offsets: list[float]  # seconds into the file, of the sounding clips
    silent: int
    nonfinite: int  # decoded samples that were NaN or +-Inf (set to 0)
    overflow: int  # mel values clipped to the float16 range
    error: str | None  # why decoding stopped part-way (the clips before it are kept)


def make_tasks(files: Iterable[tuple[int, AudioInfo]], settings: ClipSettings, clips_per_task: int) -> list[ClipTask]:
    """Cut each ``(file_index, info)`` into tasks of at most ``clips_per_task`` clips."""
    tasks = []
    for file_index, info in files:
        total = clip_count(info, settings.features, settings.hop_samples) or (1 if settings.pad_short else 0)
        for first in range(0, total, clips_per_task):
            tasks.append(ClipTask(file_index, info, first, min(clips_per_task, total - first), total))
    return tasks


_front_end: MelFrontEnd | None = None
_settings: ClipSettings | None = None


def _init_worker(settings: ClipSettings, one_thread: bool = True) -> None:
    global _front_end, _settings
    if one_thread:  # a worker process; results then do not depend on how many there are
        torch.set_num_threads(1)
    _front_end = MelFrontEnd(settings.features)
    _settings = settings


def _run_task(task: ClipTask) -> TaskClips:
    s = _settings
    kept, offsets, silent, nonfinite, overflow, error = [], [], 0, 0, 0, None
    try:
        for block in read_clips(
            task.info, s.features, task.first, task.count, s.block_clips, s.hop_samples, s.pad_short
        ):
            nonfinite += block.nonfinite
            loud = frame_rms(block.clips) > s.rms_threshold
            silent += int((~loud).sum())
            if not loud.any():
                continue
            with torch.no_grad():
                spec = _front_end(block.clips[loud]).numpy()
            if s.dtype == "float16":
                overflow += int((np.abs(spec) > FLOAT16_MAX).sum())
                spec = np.clip(spec, -FLOAT16_MAX, FLOAT16_MAX)
            kept.append(spec.astype(s.dtype, copy=False))
            offsets += [o for o, keep in zip(block.offsets, loud.tolist()) if keep]
    except AudioError as failure:
        error = str(failure)
    return TaskClips(task, np.concatenate(kept) if kept else None, offsets, silent, nonfinite, overflow, error)


def run_tasks(
    tasks: list[ClipTask], settings: ClipSettings, num_workers: int, one_thread_here: bool = True
) -> Iterator[TaskClips]:
    """Yield each task's clips in task order, from ``num_workers`` forked processes (or this one when
    ``num_workers`` <= 1; ``one_thread_here=False`` then leaves this process's torch threads alone)."""
    if num_workers <= 1:
        _init_worker(settings, one_thread_here)
        yield from map(_run_task, tasks)
        return
    with multiprocessing.get_context("fork").Pool(num_workers, _init_worker, (settings,)) as pool:
        yield from pool.imap(_run_task, tasks, chunksize=1)
