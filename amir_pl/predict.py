"""amir-predict: the instrument in recordings of any length.

    amir-predict ckpt_path=outputs/train/<run>/checkpoints/last.ckpt inputs=[song.wav,recordings/]
    amir-predict ckpt_path=... inputs=take.flac hop_seconds=0.75 aggregation=vote top_k=5 timeline=true

Each file is cut into 3 s windows every ``hop_seconds`` with the front end of
amir-prepare (resampling, RMS gate, mel; its parameters come from the
checkpoint), windows under the gate are counted as silent, the net scores the
rest in batches, and the window probabilities are aggregated per file.
Writes predictions.csv and predictions.json into the run directory.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from amir_pl.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    MelFrontEnd,
    clip_count,
    frame_rms,
    probe,
    read_clips,
    silence_gate,
)
from amir_pl.cli import CONFIG_DIR, AmirError, user_errors
from amir_pl.dataset_file import FEATURE_ATTRS, FeatureParams
from amir_pl.module import load_checkpoint

AGGREGATIONS = ("mean", "vote", "han")


def aggregate(probabilities: np.ndarray, rule: str) -> np.ndarray:
    """One score per class from the (windows, classes) softmax outputs.

    - ``mean``: the mean of the window softmaxes (a distribution);
    - ``vote``: the share of windows whose top class it is;
    - ``han``: the sum of the softmaxes divided by its maximum (Han et al., 2016), so the
      top class scores 1 and the others their strength relative to it.
    """
    if rule == "mean":
        return probabilities.mean(axis=0)
    if rule == "vote":
        return np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]) / len(probabilities)
    if rule == "han":
        total = probabilities.sum(axis=0)
        return total / total.max()
    raise AmirError(f"aggregation={rule!r}: expected one of {AGGREGATIONS}")


def find_inputs(inputs) -> tuple[list[Path], list[dict]]:
    """Files given and audio files under folders given (recursively); problems noted, not raised."""
    files, problems = [], []
    for entry in [inputs] if isinstance(inputs, str) else list(inputs):
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                problems.append(
                    {
                        "file": str(path),
                        "status": "error",
                        "error": f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder",
                    }
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append({"file": str(path), "status": "error", "error": "no such file or folder"})
    return files, problems


@dataclass(frozen=True)
class Task:
    file_index: int
    path: Path
    first: int
    count: int
    last_of_file: bool


@dataclass
class Windows:
    task: Task
    mels: torch.Tensor | None  # (sounding windows, n_mels, frames)
    offsets: list[float]  # seconds, of the sounding windows
    silent: int
    error: str | None = None


_front_end: MelFrontEnd | None = None
_options: dict = {}


def _init_worker(features: FeatureParams, hop: int, rms_threshold: float, one_thread: bool = True) -> None:
    global _front_end, _options
    if one_thread:  # a decoding worker; in the main process the net keeps every thread
        torch.set_num_threads(1)
    _front_end = MelFrontEnd(features)
    _options = {"features": features, "hop": hop, "rms_threshold": rms_threshold}


def window_features(task: Task) -> Windows:
    features, hop = _options["features"], _options["hop"]
    mels, offsets, silent = [], [], 0
    try:
        info = probe(task.path)
        for block in read_clips(info, features, task.first, task.count, hop_samples=hop, pad_short=True):
            loud = frame_rms(block.clips) > _options["rms_threshold"]
            silent += int((~loud).sum())
            if loud.any():
                with torch.no_grad():
                    mels.append(_front_end(block.clips[loud]))
                offsets += [o for o, keep in zip(block.offsets, loud.tolist()) if keep]
    except AudioError as error:
        return Windows(task, None, [], silent, str(error))
    return Windows(task, torch.cat(mels) if mels else None, offsets, silent)


@dataclass
class FileResult:
    file: str
    duration_s: float = 0.0
    windows_used: int = 0
    silent_windows: int = 0
    padded: bool = False
    status: str = "ok"  # ok | silent | error
    error: str = ""
    scores: dict = field(default_factory=dict)  # rule -> per-class scores
    offsets: list = field(default_factory=list)
    window_probabilities: list = field(default_factory=list)


def make_tasks(files: list[Path], features: FeatureParams, hop: int, windows_per_task: int, results: list[FileResult]):
    tasks = []
    for index, path in enumerate(files):
        try:
            info = probe(path)
        except AudioError as error:
            results[index].status, results[index].error = "error", str(error)
            continue
        results[index].duration_s = round(info.seconds, 3)
        total = clip_count(info, features, hop)
        if total == 0:
            results[index].padded = True
            total = 1
        for first in range(0, total, windows_per_task):
            count = min(windows_per_task, total - first)
            tasks.append(Task(index, path, first, count, first + count >= total))
    return tasks


def predict(cfg: DictConfig) -> list[dict]:
    module = load_checkpoint(cfg.ckpt_path)
    stored = module.hparams.get("features") or {}
    if set(FEATURE_ATTRS) - set(stored):
        raise AmirError(
            f"ckpt_path={cfg.ckpt_path}: the checkpoint lacks the front-end parameters "
            f"{sorted(set(FEATURE_ATTRS) - set(stored))}; train it with amir-train"
        )
    features = FeatureParams.from_mapping(stored)
    class_names = list(module.hparams["class_names"])
    if cfg.aggregation not in AGGREGATIONS:
        raise AmirError(f"aggregation={cfg.aggregation!r}: expected one of {AGGREGATIONS}")
    hop = round(float(cfg.hop_seconds) * features.sample_rate)
    if hop <= 0:
        raise AmirError(f"hop_seconds={cfg.hop_seconds}: must be positive")
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    # channels_last: the convolutions run about twice as fast on a CPU (measured; README, Performance).
    net = module.net.to(device, memory_format=torch.channels_last).eval()
    first_conv = next(layer for layer in net.modules() if isinstance(layer, torch.nn.Conv2d))
    window_bytes = first_conv.out_channels * math.prod(module.hparams["input_shape"]) * 4  # float32, "same" padding
    batch_size = _batch_size(cfg.batch_size, device, window_bytes, last_level_cache_bytes())

    files, problems = find_inputs(cfg.inputs)
    results = [FileResult(str(path)) for path in files]
    tasks = make_tasks(files, features, hop, cfg.windows_per_task, results)
    init_args = (features, hop, silence_gate(cfg.rms_threshold, stored))
    probabilities: dict[int, list[np.ndarray]] = {i: [] for i in range(len(files))}
    for windows in _run(tasks, cfg.num_workers, init_args):
        result = results[windows.task.file_index]
        result.silent_windows += windows.silent
        if windows.error:
            result.status, result.error = "error", windows.error
        if windows.mels is not None:
            result.offsets += windows.offsets
            for start in range(0, len(windows.mels), batch_size):
                batch = windows.mels[start : start + batch_size].unsqueeze(1)
                batch = batch.to(device, memory_format=torch.channels_last)
                with torch.inference_mode():
                    probabilities[windows.task.file_index].append(
                        torch.softmax(net(batch), dim=1).float().cpu().numpy()
                    )
    for index, result in enumerate(results):
        if result.status == "error" and not probabilities[index]:
            continue
        if not probabilities[index]:
            result.status = "silent"
            continue
        window_probs = np.concatenate(probabilities[index])
        result.status = "ok"  # a file that failed part-way keeps its windows and its error note
        result.windows_used = len(window_probs)
        result.scores = {rule: aggregate(window_probs, rule) for rule in AGGREGATIONS}
        if cfg.timeline:
            result.window_probabilities = window_probs.round(4).tolist()
    rows = [_row(r, class_names, cfg) for r in results] + problems
    run_dir = Path(cfg.paths.output_dir)
    _write_outputs(run_dir, rows)
    _print_table(rows)
    print(f"predictions: {run_dir / 'predictions.csv'}, {run_dir / 'predictions.json'}")
    if not any(row["status"] in ("ok", "silent") for row in rows):
        details = "; ".join(f"{row['file']}: {row['error']}" for row in rows[:5]) or "no input files"
        raise AmirError(f"nothing could be processed ({details})")
    return rows


def _batch_size(value, device: torch.device, window_activation_bytes: int, cache_bytes: int | None) -> int:
    """Windows per forward pass. ``auto``: 256 on a GPU; on a CPU as many windows as keep the first
    layer's output in 80 % of the CPU's last-level cache between the convolution and the pooling
    (measured on a 2-core EPYC with 32 MB of L3: 5.5-6.2 ms a window at 6, 8.4 at 8, 10 at 64)."""
    if value == "auto":
        if device.type != "cpu":
            return 256
        return max(1, min(64, int(0.8 * cache_bytes / window_activation_bytes))) if cache_bytes else 4
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise AmirError(f"batch_size={value!r}: expected a positive number of windows or 'auto'")


def last_level_cache_bytes(cache_dir: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The size of the largest CPU cache that Linux reports for cpu0, or None."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    sizes = []
    for path in Path(cache_dir).glob("index*/size"):
        text = path.read_text().strip()
        if text[-1:] in units and text[:-1].isdigit():
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=None)


def _run(tasks, num_workers: int, init_args):
    if num_workers <= 1:
        _init_worker(*init_args, one_thread=False)
        yield from map(window_features, tasks)
        return
    with multiprocessing.get_context("fork").Pool(num_workers, _init_worker, init_args) as pool:
        yield from pool.imap(window_features, tasks)


def _row(result: FileResult, class_names, cfg) -> dict:
    row = {
        "file": result.file,
        "duration_s": result.duration_s,
        "windows_used": result.windows_used,
        "silent_windows": result.silent_windows,
        "padded": result.padded,
        "status": result.status,
        "error": result.error,
    }
    if result.scores:
        scores = result.scores[cfg.aggregation]
        order = np.argsort(-scores, kind="stable")[: cfg.top_k]
        row["top1"] = class_names[order[0]]
        row["top1_score"] = round(float(scores[order[0]]), 4)
        row["top_k"] = [[class_names[i], round(float(scores[i]), 4)] for i in order]
        row["aggregation"] = cfg.aggregation
        row["scores"] = {
            rule: dict(zip(class_names, np.round(values, 4).tolist())) for rule, values in result.scores.items()
        }
    if result.window_probabilities:
        row["window_offsets_s"] = [round(o, 3) for o in result.offsets]
        row["window_probabilities"] = result.window_probabilities
    return row


def _write_outputs(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "predictions.json").write_text(json.dumps(rows, indent=2) + "\n")
    with (run_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "file",
                "duration_s",
                "windows_used",
                "silent_windows",
                "padded",
                "status",
                "top1",
                "top1_score",
                "top_k",
                "error",
            ]
        )
        for row in rows:
            top_k = " ".join(f"{name}:{score:.3f}" for name, score in row.get("top_k", []))
            writer.writerow(
                [
                    row["file"],
                    row.get("duration_s", ""),
                    row.get("windows_used", 0),
                    row.get("silent_windows", 0),
                    row.get("padded", False),
                    row["status"],
                    row.get("top1", ""),
                    row.get("top1_score", ""),
                    top_k,
                    row.get("error", ""),
                ]
            )


def _print_table(rows: list[dict]) -> None:
    print(f"{'file':<40} {'seconds':>8} {'windows':>8} {'silent':>7}  result")
    for row in rows:
        name = row["file"] if len(row["file"]) <= 40 else "..." + row["file"][-37:]
        if row["status"] == "ok":
            result = " ".join(f"{n} {s:.2f}" for n, s in row["top_k"]) + ("  (padded)" if row["padded"] else "")
        else:
            result = row["status"] + (f": {row['error']}" if row.get("error") else "")
        print(
            f"{name:<40} {row.get('duration_s', 0):>8.1f} {row.get('windows_used', 0):>8} "
            f"{row.get('silent_windows', 0):>7}  {result}",
            file=sys.stdout,
        )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors("amir-predict"):
        predict(cfg)


if __name__ == "__main__":
    main()
