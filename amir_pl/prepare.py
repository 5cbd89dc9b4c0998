"""amir-prepare: a folder of recordings (or a manifest) -> one amir-pl/1 dataset file.

    amir-prepare source=IRMAS-TrainingData output=data/irmas.h5
    amir-prepare source=manifest.csv output=data/set.h5 scale=db balance=true num_workers=8

Inputs: ``<root>/<class>/**/*.{wav,flac,ogg,aif,aiff,mp3}`` (class folders by name
or alias, e.g. IRMAS's ``gac``), optionally under top-level ``train/``, ``val/``,
``test/`` folders; or a CSV manifest ``path,label[,split]``. Splits not given are
made by recording (never by clip), stratified by class and seeded.

Files are cut into tasks of at most ``clips_per_task`` clips, processed in
parallel, and written in task order to a staging file, then copied to the output
in a seeded random row order (so consecutive rows are a random draw, which the
trainer's contiguous reads rely on); the result does not depend on ``num_workers``. Bad files are skipped with one line each in prepare_report.json.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from amir_pl.audio import AUDIO_EXTENSIONS, AudioError, AudioInfo, MelFrontEnd, clip_count, frame_rms, probe, read_clips
from amir_pl.cli import CONFIG_DIR, AmirError, user_errors
from amir_pl.dataset_file import SPLITS, DatasetWriter, FeatureParams, shuffle_rows
from amir_pl.labels import canonical_name
from amir_pl.report import atomic_write

log = logging.getLogger(__name__)
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Recording:
    path: Path  # absolute
    source: str  # as stored in the file: relative to the input root
    label: str  # canonical class name
    split: str | None  # given by the layout or the manifest, else None


# --- finding the recordings -----------------------------------------------------------------


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def scan_tree(root: Path) -> tuple[list[Recording], list[dict]]:
    """Class folders under ``root``, or under its ``train/ val/ test/`` folders."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = [p for p in folders if p.name in SPLITS]
    notes = []
    if split_folders:
        others = [p.name for p in folders if p.name not in SPLITS]
        if others:
            notes.append(
                {
                    "file": str(root),
                    "reason": f"folders {others} ignored: the split folders {[p.name for p in split_folders]} are used",
                }
            )
        groups = [(p, p.name) for p in split_folders]
    else:
        groups = [(root, None)]
    recordings = []
    for group_root, split in groups:
        for class_dir in sorted(p for p in group_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = canonical_name(class_dir.name)
            for path in _audio_files(class_dir):
                recordings.append(Recording(path, str(path.relative_to(root)), label, split))
    return recordings, notes


def read_manifest(manifest: Path) -> list[Recording]:
    """A CSV with columns ``path,label[,split]``; relative paths are relative to the manifest's folder."""
    base = manifest.parent
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        if "path" not in fields or "label" not in fields:
            raise AmirError(
                f"source={manifest}: a manifest needs a header with columns path,label[,split]; found {fields}"
            )
        recordings = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            split = row.get("split") or None
            if split is not None and split not in SPLITS:
                raise AmirError(f"source={manifest}, line {line}: split {split!r} is not one of {list(SPLITS)}")
            path = Path(row["path"])
            absolute = path if path.is_absolute() else base / path
            recordings.append(Recording(absolute, row["path"], canonical_name(row["label"]), split))
    return recordings


def find_recordings(source: Path) -> tuple[list[Recording], list[dict]]:
    if not source.exists():
        raise AmirError(f"source={source}: no such file or folder")
    if source.is_dir():
        return scan_tree(source)
    if source.suffix.lower() == ".csv":
        return read_manifest(source), []
    raise AmirError(f"source={source}: expected a folder of class folders or a .csv manifest")


# --- splits -----------------------------------------------------------------------------------


def assign_splits(recordings: list[Recording], fractions: dict, seed: int) -> list[Recording]:
    """Give every recording without a split one, by recording, stratified by class, seeded.

    Within each class the files are shuffled and cut by the fractions (largest
    remainder rounding), so one file's clips always stay in one split.
    """
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise AmirError(f"split_fractions={dict(fractions)}: need non-negative fractions with a positive sum")
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for recording in recordings:
        if recording.split is None:
            by_class[recording.label].append(recording)
    assigned = {id(r): r for r in recordings if r.split is not None}
    for label in sorted(by_class):
        files = sorted(by_class[label], key=lambda r: r.source)
        order = rng.permutation(len(files))
        counts = _largest_remainder(len(files), [fractions.get(s, 0) / total for s in SPLITS])
        position = 0
        for split, count in zip(SPLITS, counts):
            for index in order[position : position + count]:
                recording = files[index]
                assigned[id(recording)] = Recording(recording.path, recording.source, label, split)
            position += count
    return [assigned[id(r)] for r in recordings]


def _largest_remainder(n: int, shares: list[float]) -> list[int]:
    exact = [n * share for share in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


# --- processing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    index: int  # position in the task list (results are written in this order)
    file_index: int
    info: AudioInfo
    first_clip: int
    n_clips: int


@dataclass
class TaskResult:
    task: Task
    features: np.ndarray | None  # (k, n_mels, frames) in the output dtype
    offsets: list[float]
    silent: int
    nonfinite: int
    overflow: int
    error: str | None


_front_end: MelFrontEnd | None = None
_options: dict = {}


def _init_worker(features: FeatureParams, rms_threshold: float, dtype: str, block_clips: int) -> None:
    global _front_end, _options
    torch.set_num_threads(1)  # one thread per worker; also makes results independent of num_workers
    _front_end = MelFrontEnd(features)
    _options = {
        "features": features,
        "rms_threshold": rms_threshold,
        "dtype": np.dtype(dtype),
        "block_clips": block_clips,
    }


def process_task(task: Task) -> TaskResult:
    features, dtype = _options["features"], _options["dtype"]
    kept, offsets, silent, nonfinite, overflow = [], [], 0, 0, 0
    try:
        for block in read_clips(task.info, features, task.first_clip, task.n_clips, _options["block_clips"]):
            nonfinite += block.nonfinite
            loud = frame_rms(block.clips) > _options["rms_threshold"]
            silent += int((~loud).sum())
            if not loud.any():
                continue
            with torch.no_grad():
                spec = _front_end(block.clips[loud]).numpy()
            if dtype == np.float16:
                overflow += int((np.abs(spec) > FLOAT16_MAX).sum())
                spec = np.clip(spec, -FLOAT16_MAX, FLOAT16_MAX)
            kept.append(spec.astype(dtype))
            offsets += [o for o, keep in zip(block.offsets, loud.tolist()) if keep]
        error = None
    except AudioError as failure:
        error = str(failure)
    stacked = np.concatenate(kept) if kept else None
    return TaskResult(task, stacked, offsets, silent, nonfinite, overflow, error)


def make_tasks(infos: list[tuple[int, AudioInfo]], features: FeatureParams, clips_per_task: int) -> list[Task]:
    tasks = []
    for file_index, info in infos:
        n = clip_count(info, features)
        for first in range(0, n, clips_per_task):
            tasks.append(Task(len(tasks), file_index, info, first, min(clips_per_task, n - first)))
    return tasks


def run_tasks(tasks, num_workers: int, init_args: tuple):
    """Yield results in task order, from a pool of ``num_workers`` processes (or in this process)."""
    if num_workers <= 1:
        _init_worker(*init_args)
        for task in tasks:
            yield process_task(task)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(num_workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(process_task, tasks, chunksize=1)


# --- the app ----------------------------------------------------------------------------------


def feature_params(cfg: DictConfig) -> FeatureParams:
    sample_rate = int(cfg.sample_rate)
    if cfg.scale not in ("power", "db"):
        raise AmirError(f"scale={cfg.scale!r}: expected power or db")
    return FeatureParams(
        sample_rate=sample_rate,
        clip_samples=round(float(cfg.clip_seconds) * sample_rate),
        n_fft=int(cfg.n_fft),
        hop_length=int(cfg.hop_length),
        n_mels=int(cfg.n_mels),
        f_min=float(cfg.f_min),
        f_max=float(cfg.f_max if cfg.f_max is not None else sample_rate / 2),
        power=float(cfg.power),
        scale=str(cfg.scale),
        mel_scale=str(cfg.mel_scale),
    )


def prepare(cfg: DictConfig) -> dict:
    """Build the dataset file; returns the report (also written to prepare_report.json)."""
    started = time.time()
    if not cfg.source or not cfg.output:
        raise AmirError("give source=<folder or manifest.csv> and output=<file.h5>")
    source, output = Path(cfg.source).expanduser().resolve(), Path(cfg.output).expanduser()
    if output.exists() and not cfg.overwrite:
        raise AmirError(f"output={output} exists; add overwrite=true to replace it")
    if cfg.dtype not in ("float16", "float32"):
        raise AmirError(f"dtype={cfg.dtype!r}: expected float16 or float32")
    features = feature_params(cfg)
    class_names = [canonical_name(name) for name in cfg.classes]
    if len(set(class_names)) != len(class_names):
        raise AmirError(f"classes={list(cfg.classes)} names a class twice")
    skipped: list[dict] = []

    recordings, notes = find_recordings(source)
    skipped += notes
    outside = Counter(r.label for r in recordings if r.label not in class_names)
    for label, count in sorted(outside.items()):
        skipped.append(
            {
                "file": label,
                "reason": f"class {label!r} ({count} files) is not in classes; add it to classes to include it",
            }
        )
    recordings = [r for r in recordings if r.label in class_names]
    if not recordings:
        raise AmirError(
            f"source={source}: no audio files of the classes {class_names} found "
            f"(extensions {', '.join(AUDIO_EXTENSIONS)})"
        )
    files_found = len(recordings)
    usable, probed = [], []
    for recording in recordings:  # read headers first, so that splits are made among usable files
        try:
            info = probe(recording.path)
        except AudioError as error:
            skipped.append({"file": recording.source, "reason": str(error)})
            continue
        if clip_count(info, features) == 0:
            skipped.append(
                {
                    "file": recording.source,
                    "reason": f"shorter than one clip ({info.seconds:.2f} s < {cfg.clip_seconds} s)",
                }
            )
            continue
        usable.append(recording)
        probed.append(info)
    if not usable:
        raise AmirError(
            f"source={source}: none of the {len(recordings)} audio files is readable and at least "
            f"{cfg.clip_seconds} s long; see the skipped files: {skipped[:5]}"
        )
    recordings = assign_splits(usable, dict(cfg.split_fractions), cfg.seed)
    tasks = make_tasks(list(enumerate(probed)), features, cfg.clips_per_task)

    label_index = {name: i for i, name in enumerate(class_names)}
    per_file = defaultdict(lambda: {"clips": 0, "silent": 0, "nonfinite": 0, "overflow": 0, "errors": []})
    written = Counter()  # (split, label) -> clips
    init_args = (features, float(cfg.rms_threshold), cfg.dtype, cfg.block_clips)
    # Written recording by recording (class by class) to a staging file, then copied to the output
    # in a seeded random row order: the trainer reads runs of consecutive rows.
    staging = output.with_name(f".{output.name}.unshuffled")
    total_clips = sum(t.n_clips for t in tasks)
    with DatasetWriter(
        staging, class_names, features, dtype=cfg.dtype, chunk_clips=cfg.chunk_clips, overwrite=True
    ) as writer:
        bar = tqdm(total=total_clips, unit="clip", desc="amir-prepare", disable=not cfg.progress, dynamic_ncols=True)
        files_done = 0
        for result in run_tasks(tasks, cfg.num_workers, init_args):
            recording = recordings[result.task.file_index]
            stats = per_file[result.task.file_index]
            if result.error:
                stats["errors"].append(f"at {result.task.first_clip * cfg.clip_seconds:.0f} s: {result.error}")
            stats["silent"] += result.silent
            stats["nonfinite"] += result.nonfinite
            stats["overflow"] += result.overflow
            if result.features is not None:
                n = len(result.features)
                writer.append(
                    recording.split,
                    result.features,
                    np.full(n, label_index[recording.label]),
                    [recording.source] * n,
                    result.offsets,
                )
                stats["clips"] += n
                written[(recording.split, recording.label)] += n
            bar.update(result.task.n_clips)
            if result.task.first_clip + result.task.n_clips >= clip_count(result.task.info, features):
                files_done += 1
                bar.set_postfix(files=f"{files_done}/{len(probed)}")
        bar.close()
        if not written:
            raise AmirError(
                f"source={source}: no usable clips (every clip was silent or unreadable); see the skipped files above"
            )

    for file_index, stats in sorted(per_file.items()):
        name = recordings[file_index].source
        for error in stats["errors"]:
            reason = error if stats["clips"] == 0 else f"{error}; kept the {stats['clips']} clips before it"
            skipped.append({"file": name, "reason": reason})
        if stats["clips"] == 0 and not stats["errors"]:
            skipped.append(
                {
                    "file": name,
                    "reason": f"silent: all {stats['silent']} clips at or under rms_threshold={cfg.rms_threshold}",
                }
            )
        if stats["nonfinite"]:
            skipped.append({"file": name, "reason": f"{stats['nonfinite']} NaN/Inf samples set to 0 (file kept)"})
        if stats["overflow"]:
            skipped.append(
                {
                    "file": name,
                    "reason": f"{stats['overflow']} values above the float16 range clipped (use dtype=float32)",
                }
            )

    counts = {
        split: {label: written[(split, label)] for label in class_names}
        for split in SPLITS
        if any(written[(split, label)] for label in class_names)
    }
    counts = shuffle_into_place(staging, output, counts, class_names, cfg)
    report = {
        "source": str(source),
        "output": str(output.resolve()),
        "files_found": files_found,
        "files_used": sum(1 for s in per_file.values() if s["clips"] > 0),
        "clips": {split: sum(c.values()) for split, c in counts.items()},
        "class_counts": counts,
        "silent_clips_dropped": sum(s["silent"] for s in per_file.values()),
        "skipped": skipped,
        "features": features.as_dict(),
        "seconds": round(time.time() - started, 1),
    }
    _write_report(report, Path(cfg.paths.output_dir) / "prepare_report.json")
    _print_summary(report, class_names)
    return report


def balanced_rows(staging: Path, counts: dict, class_names, seed: int) -> tuple[dict, dict]:
    """Per split, the rows to keep so that each class has as many clips as the smallest class has
    (the thesis balanced its classes), and the resulting counts."""
    import h5py

    rng = np.random.default_rng(seed)
    keep, balanced = {}, {}
    with h5py.File(staging, "r") as src:
        for split, per_class in counts.items():
            cap = min(n for n in per_class.values() if n > 0)
            y = src[split]["y"][()]
            keep[split] = np.sort(
                np.concatenate(
                    [
                        rng.choice(np.flatnonzero(y == c), size=min(cap, int((y == c).sum())), replace=False)
                        for c in range(len(class_names))
                        if (y == c).any()
                    ]
                )
            )
            balanced[split] = {name: min(cap, per_class[name]) for name in class_names}
    return keep, balanced


def shuffle_into_place(staging: Path, output: Path, counts: dict, class_names, cfg: DictConfig) -> dict:
    """Write ``output`` from ``staging`` (balanced if asked) in a seeded random row order; returns the counts."""
    try:
        if cfg.balance:
            keep, counts = balanced_rows(staging, counts, class_names, cfg.seed)
        else:
            keep = {split: np.arange(sum(per_class.values())) for split, per_class in counts.items()}
        shuffle_rows(
            staging, output, keep, cfg.seed, rms_threshold=float(cfg.rms_threshold), chunk_clips=cfg.chunk_clips
        )
    finally:
        staging.unlink(missing_ok=True)
    return counts


def _write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    report["report_path"] = str(path)


def _print_summary(report: dict, class_names) -> None:
    splits = list(report["class_counts"])
    print(f"{'class':<18}" + "".join(f"{s:>8}" for s in splits))
    for name in class_names:
        print(f"{name:<18}" + "".join(f"{report['class_counts'][s][name]:>8}" for s in splits))
    print(f"{'total':<18}" + "".join(f"{report['clips'][s]:>8}" for s in splits))
    print(
        f"{report['files_used']} of {report['files_found']} files used, "
        f"{report['silent_clips_dropped']} silent clips dropped, {len(report['skipped'])} notes, {report['seconds']} s"
    )
    for item in report["skipped"]:
        print(f"  skipped/noted: {item['file']}: {item['reason']}")
    print(f"dataset: {report['output']}")
    print(f"report: {report['report_path']}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare")
def main(cfg: DictConfig) -> None:
    with user_errors("amir-prepare"):
        prepare(cfg)


if __name__ == "__main__":
    main()
