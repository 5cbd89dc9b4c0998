"""Streaming the dataset file into Lightning: the HDF5 ``Dataset``, batch samplers and the DataModule.

Speed comes from the read pattern, not from caching. A training batch is made of
*runs* of consecutive clips (``read_run`` clips each: by default 1, single clips)
drawn in a shuffled order, and the dataset reads each run with one contiguous HDF5 call.
amir-prepare writes each split in a seeded random row order, so a run is a random
draw of clips and a batch mixes classes like a per-clip shuffle; what runs give up
is that the same few clips share a batch in every epoch. Single-clip reads are several
times slower than runs of a chunk (h5py's cost per call; figures in docs/performance.md). The default, ``read_run=1``, gives per-clip batches paired anew
every epoch (as the thesis's code fed them), at that read cost; ``read_run=None`` (the
chunk) or a larger number trades that for speed where the loader cannot keep up.

The samplers shard by rank themselves (the Trainer's ``use_distributed_sampler``
must be off): in training each rank gets an equal share of a shared shuffled
order, so DDP ranks step in lockstep; in evaluation each rank gets a contiguous,
disjoint slice and nothing is padded or repeated, so every clip counts once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import weakref
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler

from amir_pl.core.errors import AmirError
from amir_pl.dataset.schema import DatasetFileError, DatasetInfo, read_info, read_sorted_rows

log = logging.getLogger(__name__)


class H5ClipDataset(Dataset):
    """One split of a dataset file; yields ``(x float16 (n_mels, frames), y int64)``, and the clip's
    multi-hot ``targets`` (uint8, (classes,)) third where the split has them.

    The file is opened on first read in each process (so nothing h5py is pickled
    into workers) and stays open until ``close()``; a read after that reopens it.
    ``__getitems__`` reads a whole batch with one contiguous read per run of
    consecutive indices and returns it already collated.
    """

    # Every dataset holding a handle this process opened, so that H5DataModule.teardown can close
    # them: the loaders that made them live on inside the Trainer, out of the DataModule's reach.
    _open_in_process: weakref.WeakSet[H5ClipDataset] = weakref.WeakSet()

    def __init__(self, path: str | os.PathLike, split: str, length: int):
        self.path = str(path)
        self.split = split
        self.length = length
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._x: h5py.Dataset | None = None
        self._y: np.ndarray | None = None
        self._targets: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def _open(self) -> tuple[h5py.Dataset, np.ndarray]:
        """The clips (read on demand), the labels and targets (a few bytes a clip: read once per process)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
            group = self._handle[self.split]
            self._x, self._y = group["x"], group["y"][()].astype(np.int64)
            self._targets = group["targets"][()] if "targets" in group else None
            H5ClipDataset._open_in_process.add(self)
        return self._x, self._y

    def close(self) -> None:
        """Close the file if this process opened it (a handle inherited from a forked parent
        is only dropped: the parent owns it)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._pid = self._x = self._y = self._targets = None
        H5ClipDataset._open_in_process.discard(self)

    @classmethod
    def close_all(cls, path: str | os.PathLike) -> None:
        """Close every dataset of ``path`` open in this process (each reopens on its next read)."""
        for dataset in list(cls._open_in_process):
            if dataset.path == str(path):
                dataset.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = state["_pid"] = state["_x"] = state["_y"] = state["_targets"] = None
        return state

    def __getitem__(self, index: int):
        return tuple(part[0] for part in self.__getitems__([index]))

    def __getitems__(self, indices) -> tuple[torch.Tensor, ...]:
        x_data, labels = self._open()
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        sorted_indices = indices[order]
        x = _batch_buffer((len(indices), *x_data.shape[1:]), _torch_dtype(x_data.dtype))
        read_sorted_rows(x_data, sorted_indices, x.numpy())  # one contiguous read per run of consecutive clips
        if not np.array_equal(order, np.arange(len(indices))):
            x = x[torch.from_numpy(np.argsort(order))]
        if self._targets is not None:
            return x, torch.from_numpy(labels[indices]), torch.from_numpy(self._targets[indices])
        return x, torch.from_numpy(labels[indices])


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty batch tensor; in a DataLoader worker, allocated in shared memory.

    The worker reads straight into it, so handing the batch to the main process
    moves no data (the same trick as torch's ``default_collate``).
    """
    empty = torch.empty(0, dtype=dtype)
    if torch.utils.data.get_worker_info() is None:
        return empty.new_empty(shape)
    storage = empty._typed_storage()._new_shared(math.prod(shape))
    return empty.new(storage).view(shape)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.float16 if dtype == np.float16 else torch.float32


def _worker_init(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the training process, which saves a checkpoint and then
    shuts them down: a terminal's Ctrl-C reaches every process of the group, and a worker that died of it
    would stop the run with "DataLoader worker exited unexpectedly" before the save. Then Lightning's own
    worker seeding, which a loader with a worker_init_fn would otherwise not get."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


def _passthrough(batch):
    """collate_fn for a dataset whose ``__getitems__`` already returns a collated batch."""
    return batch


class CachedSplit(Dataset):
    """A whole split held in one tensor (host or GPU memory); a batch is one index gather.

    With ``data.cache=device`` the clips never cross the PCIe bus after the first load
    and the training loop needs no workers.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None):
        self.x, self.y, self.targets = x, y, targets

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, indices) -> tuple[torch.Tensor, ...]:
        # non_blocking: building the index on the host and copying it must not wait for the
        # GPU to finish the previous step (a blocking copy synchronises the stream).
        index = torch.as_tensor(indices, dtype=torch.int64).to(self.x.device, non_blocking=True)
        if self.targets is not None:
            return self.x[index], self.y[index], self.targets[index]
        return self.x[index], self.y[index]

    def __getitem__(self, index: int):
        return tuple(part[0] for part in self.__getitems__([index]))

    @classmethod
    def load(cls, path: str | os.PathLike, split: str, device: torch.device, block: int = 4096) -> CachedSplit:
        """Read ``split`` block by block straight into a tensor on ``device`` (no second host copy)."""
        with h5py.File(path, "r") as handle:
            x_data, y = handle[split]["x"], handle[split]["y"][()].astype(np.int64)
            targets = handle[split]["targets"][()] if "targets" in handle[split] else None
            x = torch.empty(x_data.shape, dtype=_torch_dtype(x_data.dtype), device=device)
            staging = torch.empty((min(block, len(y)), *x_data.shape[1:]), dtype=x.dtype)
            if device.type == "cuda":
                staging = staging.pin_memory()
            for start in range(0, len(y), block):
                stop = min(start + block, len(y))
                x_data.read_direct(staging.numpy(), np.s_[start:stop], np.s_[: stop - start])
                x[start:stop].copy_(staging[: stop - start])
        targets = None if targets is None else torch.from_numpy(targets).to(device)
        return cls(x, torch.from_numpy(y).to(device), targets)


def cache_fits(nbytes: int, device: torch.device, fraction: float) -> tuple[bool, int]:
    """Whether ``nbytes`` fit in ``fraction`` of the free memory of ``device`` (GPU or host)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return nbytes <= fraction * free, free


class ShuffledRunBatchSampler(Sampler[list[int]]):
    """Training batches: shuffled runs of consecutive clips, sharded equally over ranks.

    Each epoch, the split is cut into runs of ``run_length`` consecutive clips,
    the runs are shuffled with ``seed + epoch``, and the resulting order is cut
    into ``num_replicas`` equal, disjoint shares (the last ``N mod
    num_replicas`` clips of the order sit out that epoch, like
    ``DistributedSampler(drop_last=True)``). Indices inside a batch are sorted:
    the order within a batch does not change the loss, and sorted runs read fastest.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        run_length: int,
        seed: int = 0,
        rank: int = 0,
        num_replicas: int = 1,
        drop_last: bool = False,
    ):
        if length < num_replicas:
            raise ValueError(f"{length} clips cannot be shared by {num_replicas} ranks")
        self.length, self.batch_size, self.run_length = length, batch_size, max(1, run_length)
        self.seed, self.rank, self.num_replicas, self.drop_last = seed, rank, num_replicas, drop_last
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch; reseeds the shuffle."""
        self.epoch = epoch

    @property
    def sampler(self) -> ShuffledRunBatchSampler:
        """Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler`` (not on the batch
        sampler itself): this sampler is its own."""
        return self

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start in ``epoch``, skipping its first ``batches_done`` batches (once: a resumed run)."""
        self.epoch = epoch
        self._resume = (epoch, batches_done)

    @property
    def per_rank(self) -> int:
        return self.length // self.num_replicas

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        starts = np.arange(0, self.length, self.run_length)
        rng.shuffle(starts)
        order = (starts[:, None] + np.arange(self.run_length)).ravel()  # each run's clips, runs in shuffled order
        order = order[order < self.length]  # the last run may be short
        share = order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        skip = self._resume[1] if self._resume and self._resume[0] == self.epoch else 0
        self._resume = None
        for start in range(skip * self.batch_size, len(share), self.batch_size):
            batch = share[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield np.sort(batch).tolist()


class ContiguousBatchSampler(Sampler[list[int]]):
    """Evaluation batches: rank ``r`` reads the ``r``-th contiguous slice, in order, nothing padded.

    Shards differ in length by at most one clip (the first ``length mod
    num_replicas`` ranks hold one more), so every clip is evaluated exactly once
    over all ranks; torchmetrics sums the states across ranks.

    With fewer clips than ranks, ranks ``length`` and above hold no clip and
    yield one empty batch: Lightning refuses a rank with zero batches (or, when
    allowed, skips its epoch end, where torchmetrics syncs, and the other ranks
    wait forever), so every rank runs the loop, and an empty batch adds nothing.
    """

    def __init__(self, length: int, batch_size: int, rank: int = 0, num_replicas: int = 1):
        per_rank, extra = divmod(length, num_replicas)
        self.first = rank * per_rank + min(rank, extra)
        self.last = self.first + per_rank + (rank < extra)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return max(1, math.ceil((self.last - self.first) / self.batch_size))

    def __iter__(self):
        if self.first == self.last:
            yield []
        for start in range(self.first, self.last, self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.last)))


def rows_grouped_by_class(path: str | os.PathLike, split: str, run_length: int, tolerance: float = 0.8) -> bool:
    """Whether runs of ``run_length`` consecutive labels hold far fewer distinct classes than random draws would.

    A random run of r clips from classes with frequencies p_c holds sum_c 1 - (1 - p_c)^r distinct
    classes on average; a file written class by class holds about 1. Fewer than ``tolerance``
    times the random expectation means the rows are grouped.
    """
    with h5py.File(path, "r") as handle:
        y = handle[split]["y"][()]
    runs = len(y) // run_length
    if runs < 2:
        return False
    _, counts = np.unique(y, return_counts=True)
    expected = float(np.sum(1 - (1 - counts / len(y)) ** run_length))
    by_run = np.sort(y[: runs * run_length].reshape(runs, run_length), axis=1)
    distinct = 1 + (np.diff(by_run, axis=1) != 0).sum(axis=1)
    return float(distinct.mean()) < tolerance * expected


class H5DataModule(L.LightningDataModule):
    """The splits of one amir-pl/1 file, streamed with batched contiguous reads.

    ``read_run``: clips per contiguous read in training (None: the file's chunk
    length). Shuffling is seeded by ``seed`` and the epoch. ``test_split``
    chooses which split ``test_dataloader`` serves (evaluation of any split).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int | None = 4,
        read_run: int | None = 1,
        drop_last: bool = False,
        seed: int = 0,
        test_split: str = "test",
        cache: str = "none",
        cache_max_fraction: float = 0.7,
    ):
        super().__init__()
        for option, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise AmirError(f"data.{option}={value!r}: must be a whole number of clips >= 1 (the thesis used 64)")
        self.path = Path(path)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.read_run = read_run
        self.drop_last = drop_last
        self.seed = seed
        self.test_split = test_split
        if cache not in ("none", "memory", "device"):
            raise DatasetFileError(f"data.cache={cache!r}: use none, memory or device")
        self.cache, self.cache_max_fraction = cache, cache_max_fraction
        self._cached: dict[str, CachedSplit] = {}
        self._info: DatasetInfo | None = None
        self._resume_position: dict | None = None

    @property
    def info(self) -> DatasetInfo:
        """The validated file description (read once; raises DatasetFileError for a bad file)."""
        if self._info is None:
            self._info = read_info(self.path)
        return self._info

    def has_split(self, split: str) -> bool:
        return bool(self.info.splits.get(split))

    def first_clips(self, split: str, count: int) -> torch.Tensor:
        """The split's first ``count`` clips: a random sample, since a split's rows are in random order."""
        with h5py.File(self.path, "r") as f:
            return torch.from_numpy(f[split]["x"][: min(count, len(f[split]["x"]))]).float()

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _cache_device(self) -> torch.device:
        if self.cache == "device" and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _local_copies(self, device: torch.device) -> int:
        """How many copies of a cached split land in ``device``'s memory: one per process on this
        node for host memory (every local DDP rank loads its own), one for a GPU (a rank each)."""
        if device.type == "cpu" and self.trainer is not None:
            return max(1, int(getattr(self.trainer, "num_devices", 1)))
        return 1

    def _cached_split(self, split: str) -> CachedSplit | None:
        """The split held in memory when ``cache`` asks for it and it fits; None: stream it.

        Each local rank holds its own copy, and the free memory is checked for all of
        them together: ``data.cache=memory`` on 8 ranks needs 8 copies of free RAM. (Sharing
        one copy through shared memory would save the RAM, but /dev/shm is often small in
        containers and the ranks would have to agree on who loads it; the sum is simple and
        never oversubscribes.) The ranks then agree on the outcome, so that they all cache or
        all stream and draw the same training order.
        """
        if self.cache == "none":
            return None
        if split not in self._cached:
            device = self._cache_device()
            clip_bytes = math.prod(self.info.input_shape) * np.dtype(self.info.dtype).itemsize
            copies = self._local_copies(device)
            nbytes = self.info.splits[split] * clip_bytes
            fits, free = cache_fits(copies * nbytes, device, self.cache_max_fraction)
            if self.trainer is not None:
                fits = self.trainer.strategy.reduce_boolean_decision(fits, all=True)
            if not fits:
                log.warning(
                    "data.cache=%s: split %r needs %.2f GB (%d local rank(s) x %.2f GB), more than %.0f%% "
                    "of the %.2f GB free on %s (or another rank lacks it); streaming it from the file "
                    "instead",
                    self.cache,
                    split,
                    copies * nbytes / 1e9,
                    copies,
                    nbytes / 1e9,
                    100 * self.cache_max_fraction,
                    free / 1e9,
                    device,
                )
                self._cached[split] = None
            else:
                self._cached[split] = CachedSplit.load(self.path, split, device)
        return self._cached[split]

    def _loader(self, split: str, batch_sampler: Sampler) -> DataLoader:
        cached = self._cached_split(split)
        if cached is not None:  # already collated tensors in memory: no workers, no pinning
            return DataLoader(
                cached,
                batch_sampler=batch_sampler,
                collate_fn=_passthrough,
                generator=torch.Generator().manual_seed(self.seed),
            )
        workers = self.num_workers
        return DataLoader(
            H5ClipDataset(self.path, split, self.info.splits[split]),
            batch_sampler=batch_sampler,
            collate_fn=_passthrough,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            worker_init_fn=_worker_init if workers > 0 else None,
            # Worker seeds come from this generator, not the global RNG, so building a loader
            # draws nothing from the stream dropout uses (a resumed run stays exact).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        self.require_split(split)
        rank, world = self._rank()
        sampler = ContiguousBatchSampler(self.info.splits[split], self.eval_batch_size, rank, world)
        return self._loader(split, sampler)

    def teardown(self, stage: str) -> None:
        """Called by Lightning at the end of fit, validate, test and predict: closes the HDF5
        handles this process opened and lets go of the cached splits, so a long-lived process
        (a notebook, a sweep) keeps no file open. A later stage reopens and reloads on demand."""
        H5ClipDataset.close_all(self.path)
        self._cached.clear()

    def require_split(self, split: str) -> None:
        """DatasetFileError unless the file holds clips in ``split``."""
        if not self.info.splits.get(split):
            raise DatasetFileError(f"{self.path}: no clips in split {split!r} (it has {self.info.splits})")

    def _training_run_length(self) -> int:
        """Clips per contiguous read in training: ``read_run``, else the file's chunk length.

        Runs are random draws only in a file whose rows are in random order (amir-prepare
        writes them so). A file written class by class (amir-pl before 2026-11-28) would give
        batches of a few classes: such a file is detected and read one clip at a time. In memory,
        runs buy nothing, so batches there are fully random unless read_run says otherwise.
        """
        if self.read_run:
            requested = int(self.read_run)
        elif self._cached_split("train") is not None:
            return 1
        else:
            requested = self.info.chunk_clips
        if requested > 1 and rows_grouped_by_class(self.info.path, "train", requested):
            log.warning(
                "%s: its training rows are grouped by class (written by an older amir-prepare), so runs of "
                "%d consecutive clips would give batches of few classes; reading one clip at a time instead "
                "(slower; re-run amir-prepare to write a shuffled file)",
                self.info.path,
                requested,
            )
            return 1
        return requested

    def train_dataloader(self) -> DataLoader:
        self.require_split("train")
        rank, world = self._rank()
        sampler = ShuffledRunBatchSampler(
            self.info.splits["train"],
            self.batch_size,
            self._training_run_length(),
            seed=self.seed,
            rank=rank,
            num_replicas=world,
            drop_last=self.drop_last,
        )
        if self._resume_position:
            position, self._resume_position = self._resume_position, None
            epoch, done = position["epoch"], position["batches_done"]
            if done >= position["epoch_batches"]:
                epoch, done = epoch + 1, 0
            sampler.resume_at(epoch, done)
        return self._loader("train", sampler)

    def state_dict(self) -> dict:
        """Where training stands in the epoch; saved in every checkpoint so a resumed run
        skips the batches already trained instead of repeating them."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return {
            "epoch": trainer.current_epoch,
            "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            "epoch_batches": trainer.num_training_batches,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_position = dict(state_dict) if state_dict else None

    def val_dataloader(self):
        return self._eval_loader("val") if self.has_split("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)
