"""The dataset file, HDF5 schema ``amir-pl/1``: validation on read, atomic writing.

One file holds log-mel (or power-mel) clips. Root attributes describe the
features (see ``FEATURE_ATTRS``) and the class list; groups ``train`` / ``val``
/ ``test`` (training needs ``train``; a file for evaluation only may hold just
``test``) hold ``x`` (N, n_mels, frames),
``y`` (N,), ``source`` (N,) and ``offset`` (N,), and optionally ``targets`` (N, classes; uint8
multi-hot: every instrument sounding in the clip, its ``y`` included). Rows of a split are in a seeded random
order, so that any run of consecutive rows is a random draw of clips (see ``shuffle_rows``).
The optional root attribute ``rms_threshold`` records the silence gate the clips passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from amir_pl.core.errors import AmirError
from amir_pl.core.files import temporary_name
from amir_pl.core.labels import CLASS_NAMES
from amir_pl.features.params import FEATURE_ATTRS, FeatureParams

SCHEMA = "amir-pl/1"
SPLITS = ("train", "val", "test")
SPLIT_DATASETS = ("x", "y", "source", "offset")
DEFAULT_CHUNK_CLIPS = 8


class DatasetFileError(AmirError, ValueError):
    """A dataset file that cannot be used, with a message saying what is wrong and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a reader needs to know about a validated dataset file."""

    path: Path
    class_names: tuple[str, ...]
    features: FeatureParams
    splits: dict[str, int]  # split name -> number of clips
    dtype: np.dtype
    chunk_clips: int  # clips per HDF5 chunk of train/x (1 when not chunked)
    rms_threshold: float | None = None  # the silence gate the clips passed (None: not recorded)
    targets: tuple[str, ...] = ()  # the splits that hold multi-hot ``targets``

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.features.n_mels, self.features.frames)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _fail(path, what: str, fix: str = "") -> DatasetFileError:
    message = f"{path}: {what}"
    if fix:
        message += f". {fix}"
    return DatasetFileError(message)


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Open ``path``, check it against schema amir-pl/1 and describe it.

    Raises DatasetFileError naming the attribute or dataset at fault, what was
    expected and what was found.
    """
    path = Path(path)
    regenerate = "Write the file with amir-prepare (or amir-synth + amir-prepare)"
    if not path.exists():
        raise _fail(path, "no such file", "Set data.path to a dataset file made by amir-prepare")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise _fail(path, f"not a readable HDF5 file ({error})", regenerate) from None
    with handle as f:
        schema = f.attrs.get("schema")
        schema = schema.decode() if isinstance(schema, bytes) else schema
        if schema != SCHEMA:
            raise _fail(path, f"root attribute 'schema' is {schema!r}, expected {SCHEMA!r}", regenerate)
        missing = [name for name in ("class_names", *FEATURE_ATTRS) if name not in f.attrs]
        if missing:
            raise _fail(path, f"missing root attribute(s) {', '.join(missing)}", regenerate)
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["class_names"])
        if not class_names or len(set(class_names)) != len(class_names):
            raise _fail(path, f"root attribute 'class_names' must be unique names, found {list(class_names)}")
        try:
            features = FeatureParams.from_mapping(f.attrs)
        except (TypeError, ValueError) as error:
            raise _fail(path, f"a feature attribute has the wrong type ({error})", regenerate) from None
        if features.scale not in ("power", "db"):
            raise _fail(path, f"root attribute 'scale' is {features.scale!r}, expected 'power' or 'db'")
        if not any(split in f for split in SPLITS):
            raise _fail(path, f"no split group 'train', 'val' or 'test' (found groups {sorted(f.keys())})", regenerate)
        splits, dtype, chunk_clips, with_targets = {}, None, 1, []
        for split in SPLITS:
            if split not in f:
                continue
            group = f[split]
            for name in SPLIT_DATASETS:
                if name not in group or not isinstance(group[name], h5py.Dataset):
                    raise _fail(path, f"dataset '{split}/{name}' is missing", regenerate)
            x = group["x"]
            expected = (features.n_mels, features.frames)
            if x.ndim != 3 or tuple(x.shape[1:]) != expected:
                raise _fail(
                    path,
                    f"dataset '{split}/x' has shape {x.shape}, expected (N, {expected[0]}, {expected[1]}) "
                    f"from attributes n_mels={features.n_mels}, clip_samples={features.clip_samples}, "
                    f"hop_length={features.hop_length}",
                )
            if x.dtype not in (np.float16, np.float32):
                raise _fail(path, f"dataset '{split}/x' has dtype {x.dtype}, expected float16 or float32")
            n = x.shape[0]
            for name in ("y", "source", "offset"):
                if group[name].shape != (n,):
                    raise _fail(path, f"dataset '{split}/{name}' has shape {group[name].shape}, expected ({n},)")
            y = group["y"]
            if y.dtype.kind not in "iu":
                raise _fail(path, f"dataset '{split}/y' has dtype {y.dtype}, expected an integer type")
            labels = y[()]
            if n and (labels.min() < 0 or labels.max() >= len(class_names)):
                raise _fail(
                    path,
                    f"dataset '{split}/y' holds labels {labels.min()}..{labels.max()}, "
                    f"expected 0..{len(class_names) - 1} (one per class_names entry)",
                )
            if "targets" in group:
                _check_targets(path, split, group["targets"], n, len(class_names), labels)
                with_targets.append(split)
            splits[split] = n
            if dtype is None:  # the first split present describes the layout
                dtype = x.dtype
                chunk_clips = x.chunks[0] if x.chunks else 1
        rms_threshold = float(f.attrs["rms_threshold"]) if "rms_threshold" in f.attrs else None
    return DatasetInfo(path, class_names, features, splits, dtype, chunk_clips, rms_threshold, tuple(with_targets))


def _check_targets(path: Path, split: str, targets, n: int, classes: int, labels: np.ndarray) -> None:
    """``targets``: (N, classes) of 0/1, with every clip's own label set."""
    if not isinstance(targets, h5py.Dataset) or targets.shape != (n, classes):
        shape = getattr(targets, "shape", None)
        raise _fail(path, f"dataset '{split}/targets' has shape {shape}, expected ({n}, {classes}): one row per clip")
    if targets.dtype.kind not in "iub":
        raise _fail(path, f"dataset '{split}/targets' has dtype {targets.dtype}, expected 0/1 integers (uint8)")
    values = targets[()]
    if values.size and (values.min() < 0 or values.max() > 1):
        raise _fail(path, f"dataset '{split}/targets' holds values {values.min()}..{values.max()}, expected 0 or 1")
    if n and not values[np.arange(n), labels].all():
        row = int(np.flatnonzero(values[np.arange(n), labels] == 0)[0])
        raise _fail(path, f"dataset '{split}/targets' row {row} lacks its own label y={labels[row]}")


class DatasetWriter:
    """Write a dataset file under a temporary name; rename it into place only when complete.

    Use as a context manager and ``append`` batches of clips to a split. If the
    block raises, the temporary file is removed and ``path`` is untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        class_names,
        features: FeatureParams,
        dtype: str = "float16",
        chunk_clips: int = DEFAULT_CHUNK_CLIPS,
        overwrite: bool = False,
        rms_threshold: float | None = None,
    ):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=true to replace it")
        self.tmp_path = temporary_name(self.path)
        self.class_names = tuple(class_names)
        self.features = features
        self.dtype = np.dtype(dtype)
        self.chunk_clips = chunk_clips
        self.rms_threshold = rms_threshold
        self._file: h5py.File | None = None

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp_path, "w")
        self._file.attrs["schema"] = SCHEMA
        self._file.attrs["class_names"] = list(self.class_names)
        for name, value in self.features.as_dict().items():
            self._file.attrs[name] = value
        if self.rms_threshold is not None:
            self._file.attrs["rms_threshold"] = float(self.rms_threshold)
        return self

    def _group(self, split: str) -> h5py.Group:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split in self._file:
            return self._file[split]
        group = self._file.create_group(split)
        shape = (self.features.n_mels, self.features.frames)
        group.create_dataset(
            "x", (0, *shape), maxshape=(None, *shape), dtype=self.dtype, chunks=(self.chunk_clips, *shape)
        )
        group.create_dataset("y", (0,), maxshape=(None,), dtype="int64", chunks=(4096,))
        group.create_dataset("source", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(4096,))
        group.create_dataset("offset", (0,), maxshape=(None,), dtype="float64", chunks=(4096,))
        return group

    def append(self, split: str, x, y, source, offset, targets=None) -> None:
        """Clips of ``split``; ``targets`` (n, classes) multi-hot, given for every append of a split or none."""
        group = self._group(split)
        n_old, n_new = group["x"].shape[0], len(x)
        columns = [("x", x), ("y", y), ("source", source), ("offset", offset)]
        if (targets is not None) != ("targets" in group) and n_old:
            raise ValueError(f"split {split!r}: targets given for some appends and not others")
        if targets is not None:
            if "targets" not in group:
                classes = len(self.class_names)
                group.create_dataset(
                    "targets", (0, classes), maxshape=(None, classes), dtype="uint8", chunks=(4096, classes)
                )
            columns.append(("targets", targets))
        for name, values in columns:
            dataset = group[name]
            dataset.resize(n_old + n_new, axis=0)
            dataset[n_old:] = np.asarray(values, dtype=dataset.dtype if name != "source" else object)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()  # flushes: a full disk may fail here
            if exc_type is None:
                os.replace(self.tmp_path, self.path)
        finally:
            self.tmp_path.unlink(missing_ok=True)  # gone after the rename; removed after any failure


def read_sorted_rows(dataset: h5py.Dataset, sorted_indices: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = dataset[sorted_indices[k]]`` with one contiguous read per run of consecutive rows.

    A repeated index starts a new run. Single-row reads cost about as much as runs of 8
    (h5py's per-call overhead), so runs are what make streaming fast.
    """
    starts = np.flatnonzero(np.diff(sorted_indices, prepend=-2) != 1)
    for begin, end in zip(starts, [*starts[1:], len(sorted_indices)]):
        first = int(sorted_indices[begin])
        dataset.read_direct(out, np.s_[first : first + end - begin], np.s_[begin:end])


def shuffle_rows(
    source: str | os.PathLike,
    output: str | os.PathLike,
    keep: dict[str, np.ndarray],
    seed: int,
    rms_threshold: float | None = None,
    chunk_clips: int = DEFAULT_CHUNK_CLIPS,
    block: int = 1024,
) -> None:
    """Copy the rows ``keep[split]`` of each split of ``source`` to ``output`` in a seeded random order.

    A file written recording by recording holds its clips grouped by class and file; after
    this, a run of consecutive rows is a random draw, so the trainer can read runs (fast) and
    still get batches mixed like a per-clip shuffle. Memory stays bounded by ``block`` clips.
    """
    with h5py.File(source, "r") as src:
        features = FeatureParams.from_mapping(src.attrs)
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in src.attrs["class_names"]]
        dtype = next(src[split]["x"].dtype for split in SPLITS if split in src)
        with DatasetWriter(
            output,
            class_names,
            features,
            dtype=dtype,
            chunk_clips=chunk_clips,
            overwrite=True,
            rms_threshold=rms_threshold,
        ) as writer:
            for split_index, split in enumerate(SPLITS):
                if split not in src or len(keep.get(split, ())) == 0:
                    continue
                group = src[split]
                order = np.random.default_rng([seed, split_index]).permutation(np.asarray(keep[split]))
                y, offset, source_rows = group["y"][()], group["offset"][()], group["source"].asstr()[()]
                targets = group["targets"][()] if "targets" in group else None
                for start in range(0, len(order), block):
                    rows = order[start : start + block]
                    sorted_rows = np.sort(rows)
                    x = np.empty((len(rows), *group["x"].shape[1:]), dtype=group["x"].dtype)
                    read_sorted_rows(group["x"], sorted_rows, x)
                    x = x[np.searchsorted(sorted_rows, rows)]
                    writer.append(
                        split,
                        x,
                        y[rows],
                        source_rows[rows].tolist(),
                        offset[rows],
                        None if targets is None else targets[rows],
                    )


def write_synthetic(
    path,
    clips_per_class: dict[str, int] | int = 8,
    class_names=None,
    features: FeatureParams | None = None,
    seed: int = 0,
    **writer_kwargs,
) -> Path:
    """A learnable stand-in dataset for tests and benchmarks (no audio involved).

    Class k's clips carry a loud band at a class-specific mel position over
    noise, so a ConvNet can learn them in a few steps. ``clips_per_class`` is a
    count per class for every split, or a ``{split: count}`` mapping.
    """
    class_names = tuple(class_names or CLASS_NAMES)
    features = features or FeatureParams()
    if isinstance(clips_per_class, int):
        clips_per_class = {split: clips_per_class for split in SPLITS}
    rng = np.random.default_rng(seed)
    n_mels, frames = features.n_mels, features.frames
    band = max(1, n_mels // (len(class_names) + 1))
    with DatasetWriter(path, class_names, features, **writer_kwargs) as writer:
        for split, per_class in clips_per_class.items():
            y = np.repeat(np.arange(len(class_names)), per_class)
            rng.shuffle(y)
            for start in range(0, len(y), 1024):
                labels = y[start : start + 1024]
                x = rng.random((len(labels), n_mels, frames), dtype=np.float32) * 0.5
                for i, label in enumerate(labels):
                    low = label * band
                    x[i, low : low + band, :] += 1.0
                sources = [
                    f"{class_names[label]}/synthetic_{split}_{start + i:06d}.wav" for i, label in enumerate(labels)
                ]
                writer.append(split, x, labels, sources, np.zeros(len(labels)))
    return Path(path)
