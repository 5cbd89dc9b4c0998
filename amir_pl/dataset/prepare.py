"""A folder of recordings (or a manifest) -> one amir-pl/1 dataset file (amir-prepare).

    amir-prepare source=IRMAS-TrainingData output=data/irmas.h5
    amir-prepare source=manifest.csv output=data/set.h5 features.scale=db balance=true num_workers=8

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

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write, read_table, warn_if_short_of_space
from amir_pl.core.labels import canonical_name
from amir_pl.dataset.schema import SPLITS, DatasetWriter, shuffle_rows
from amir_pl.features.audio import AUDIO_EXTENSIONS, AudioError, clip_count, probe
from amir_pl.features.params import FeatureParams
from amir_pl.features.pipeline import ClipSettings, make_tasks, run_tasks


@dataclass(frozen=True)
class Recording:
    path: Path  # absolute
    source: str  # as stored in the file: relative to the input root
    label: str  # canonical class name
    split: str | None  # given by the layout or the manifest, else None
    family: str | None = None  # the manifest's family column (amir-synth writes one)
    instruments: tuple[str, ...] = ()  # the manifest's instruments column: every class sounding (label included)


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
    """A CSV with columns ``path,label[,split][,family][,instruments]``; relative paths are relative to the
    manifest's folder. ``instruments`` (every instrument sounding, ``;``-separated) makes the multi-hot targets."""
    base = manifest.parent
    fields, rows = read_table(manifest)
    if "path" not in fields or "label" not in fields:
        raise AmirError(f"source={manifest}: a manifest needs a header with columns path,label[,split]; found {fields}")
    recordings = []
    for line, row in rows:
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise AmirError(f"source={manifest}, line {line}: split {split!r} is not one of {list(SPLITS)}")
        path = Path(row.get("path", ""))
        absolute = path if path.is_absolute() else base / path
        label = canonical_name(row.get("label", ""))
        instruments = tuple(canonical_name(name) for name in (row.get("instruments") or "").split(";") if name.strip())
        recordings.append(
            Recording(absolute, row.get("path", ""), label, split, row.get("family") or None, instruments)
        )
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


def splits_by_family(recordings: list[Recording], family_splits: dict, source: Path) -> list[Recording]:
    """``family_splits`` = {split: [families]}: a recording of a named family goes to that split,
    every other one to train (whatever split the manifest gave it)."""
    split_of = {}
    for split, families in family_splits.items():
        if split not in SPLITS:
            raise AmirError(f"family_splits.{split}: not a split; the splits are {list(SPLITS)}")
        for family in families:
            if family in split_of:
                raise AmirError(f"family_splits: family {family!r} is named for {split_of[family]} and {split}")
            split_of[family] = split
    if any(r.family is None for r in recordings):
        raise AmirError(
            f"source={source}: family_splits needs a manifest with a family column "
            "(amir-synth writes <output>/manifest.csv with one)"
        )
    unknown = sorted(set(split_of) - {r.family for r in recordings})
    if unknown:
        raise AmirError(f"family_splits: no recording of the families {unknown} in {source}")
    return [replace(r, split=split_of.get(r.family, "train")) for r in recordings]


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
                assigned[id(recording)] = replace(recording, split=split)
            position += count
    return [assigned[id(r)] for r in recordings]


def _largest_remainder(n: int, shares: list[float]) -> list[int]:
    exact = [n * share for share in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


# --- the app ----------------------------------------------------------------------------------


def prepare(cfg: DictConfig) -> dict:
    """Build the dataset file; returns the report (also written to prepare_report.json)."""
    started = time.time()
    if not cfg.source or not cfg.output:
        raise AmirError("give source=<folder or manifest.csv> and output=<file.h5>")
    source, output = Path(cfg.source).expanduser().resolve(), Path(cfg.output).expanduser()
    if output.exists() and not cfg.overwrite:
        raise AmirError(f"output={output} exists; add overwrite=true to replace it")
    features: FeatureParams = instantiate(cfg.features)
    clip_seconds = cfg.features.clip_seconds
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
                    "reason": f"shorter than one clip ({info.seconds:.2f} s < {clip_seconds} s)",
                }
            )
            continue
        usable.append(recording)
        probed.append(info)
    if not usable:
        raise AmirError(
            f"source={source}: none of the {len(recordings)} audio files is readable and at least "
            f"{clip_seconds} s long; see the skipped files: {skipped[:5]}"
        )
    if any(cfg.family_splits.values()):
        usable = splits_by_family(usable, dict(cfg.family_splits), source)
    recordings = assign_splits(usable, dict(cfg.split_fractions), cfg.seed)
    settings = ClipSettings(features, float(cfg.rms_threshold), dtype=str(cfg.dtype), block_clips=cfg.block_clips)
    tasks = make_tasks(enumerate(probed), settings, cfg.clips_per_task)

    label_index = {name: i for i, name in enumerate(class_names)}
    # multi-hot targets when the manifest lists an instrument beside a clip's own (classes outside `classes`
    # left out): a solo render's manifest gives the same file as a folder scan
    with_targets = any(set(r.instruments) - {r.label} for r in recordings)
    if with_targets:
        unknown = Counter(name for r in recordings for name in r.instruments if name not in label_index)
        skipped += [
            {
                "file": name,
                "reason": f"instrument {name!r} ({count} clips' instruments column) is not in classes: left out of targets",
            }
            for name, count in sorted(unknown.items())
        ]
    per_file = defaultdict(lambda: {"clips": 0, "silent": 0, "nonfinite": 0, "overflow": 0, "errors": []})
    written = Counter()  # (split, label) -> clips
    # Written recording by recording (class by class) to a staging file, then copied to the output
    # in a seeded random row order: the trainer reads runs of consecutive rows.
    staging = output.with_name(f".{output.name}.unshuffled")
    total_clips = sum(t.count for t in tasks)
    clip_bytes = features.n_mels * features.frames * np.dtype(str(cfg.dtype)).itemsize
    # the staging file and the shuffled output exist side by side until the end
    warn_if_short_of_space(
        output.parent, 2 * total_clips * clip_bytes, "the dataset file and its staging copy", "output="
    )
    with DatasetWriter(
        staging, class_names, features, dtype=str(cfg.dtype), chunk_clips=cfg.chunk_clips, overwrite=True
    ) as writer:
        bar = tqdm(total=total_clips, unit="clip", desc="amir-prepare", disable=not cfg.progress, dynamic_ncols=True)
        files_done = 0
        for result in run_tasks(tasks, settings, cfg.num_workers):
            recording = recordings[result.task.file_index]
            stats = per_file[result.task.file_index]
            if result.error:
                stats["errors"].append(f"at {result.task.first * clip_seconds:.0f} s: {result.error}")
            stats["silent"] += result.silent
            stats["nonfinite"] += result.nonfinite
            stats["overflow"] += result.overflow
            if result.mels is not None:
                n = len(result.mels)
                targets = None
                if with_targets:
                    targets = np.zeros((n, len(class_names)), dtype=np.uint8)
                    sounding = {recording.label, *recording.instruments} & set(label_index)
                    targets[:, [label_index[name] for name in sounding]] = 1
                writer.append(
                    recording.split,
                    result.mels,
                    np.full(n, label_index[recording.label]),
                    [recording.source] * n,
                    result.offsets,
                    targets,
                )
                stats["clips"] += n
                written[(recording.split, recording.label)] += n
            bar.update(result.task.count)
            if result.task.ends_file:
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
