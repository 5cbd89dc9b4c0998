"""The instrument in recordings of any length (amir-predict).

Each file is cut into 3 s windows every ``hop_seconds`` with the front end of
amir-prepare (resampling, RMS gate, mel; its parameters come from the
checkpoint), windows under the gate are counted as silent, the net scores the
rest in batches (each window also warped along its mel axis by a few semitones, test-time
augmentation, where the checkpoint was trained with pitch warping: ``tta_semitones``), and the
window probabilities are aggregated per file.
Writes predictions.csv and predictions.json into the run directory, and with ``timeline=true`` a
PNG per file of the class probabilities over time.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from tqdm import tqdm

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write
from amir_pl.features.audio import AUDIO_EXTENSIONS, AudioError, AudioInfo, clip_count, probe
from amir_pl.features.params import FEATURE_ATTRS, FeatureParams, silence_gate
from amir_pl.features.pipeline import ClipSettings, make_tasks, run_tasks
from amir_pl.inference.config import Aggregation
from amir_pl.inference.plots import plot_timeline
from amir_pl.inference.tta import tta_warps, warped_views
from amir_pl.training.augment import mel_centres
from amir_pl.training.module import class_scores, load_checkpoint
from amir_pl.training.precision import autocast, scoring_precision

log = logging.getLogger(__name__)

AGGREGATIONS = tuple(rule.value for rule in Aggregation)


def aggregate(probabilities: np.ndarray, rule: str) -> np.ndarray:
    """One score per class from the (windows, classes) window scores (a softmax model's
    probabilities, or a sigmoid model's per-class ones).

    - ``mean``: the mean of the window scores (for a softmax model, a distribution);
    - ``vote``: the share of windows whose top class it is;
    - ``han``: the sum of the window scores divided by its maximum (Han et al., 2016), so the
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
    offsets: list = field(default_factory=list)  # seconds into the file, of each window scored
    window_probs: np.ndarray | None = None  # (windows, classes) scores: softmax or sigmoid (Scorer.objective)


def _probe_all(files: list[Path], settings: ClipSettings, results: list[FileResult]) -> list[tuple[int, AudioInfo]]:
    """The readable files with their headers; the others get their error in ``results``."""
    readable = []
    for index, path in enumerate(files):
        try:
            info = probe(path)
        except AudioError as error:
            results[index].status, results[index].error = "error", str(error)
            continue
        results[index].duration_s = round(info.seconds, 3)
        results[index].padded = clip_count(info, settings.features, settings.hop_samples) == 0
        readable.append((index, info))
    return readable


@dataclass
class Scorer:
    """One checkpoint, or several averaged (an ensemble), ready to score windows of recordings: the
    nets on the device, the front end they share."""

    nets: list[torch.nn.Module]
    class_names: list[str]
    features: FeatureParams
    settings: ClipSettings
    device: torch.device
    batch_size: int
    precision: str  # the forward pass runs in Lightning's autocast for a "-mixed" precision
    objective: str = "softmax"  # softmax: one instrument, scores sum to 1 | sigmoid: each class scored on its own
    checkpoints: list[str] = field(default_factory=list)
    tta_semitones: tuple[float, ...] = ()  # each window also scored warped by these (tta_warps); (): off
    mel_centres: torch.Tensor | None = field(default=None, init=False)  # Hz of each mel band, for the warps

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return class_scores(logits, self.objective)

    def __post_init__(self) -> None:
        if self.tta_semitones:
            self.mel_centres = mel_centres(self.features.as_dict()).to(self.device)

    def window_scores(self, batch: torch.Tensor) -> torch.Tensor:
        """The class scores of a batch of windows (batch, 1, n_mels, frames): each net's, for each
        warp of ``tta_semitones``, averaged over the nets and the warps."""
        views = [batch]  # the plain path: the batch as it came
        if self.tta_semitones:
            warped = warped_views(batch[:, 0], self.mel_centres, self.tta_semitones, self.features.scale)
            views = [view.unsqueeze(1).contiguous(memory_format=torch.channels_last) for view in warped]
        return torch.stack([self.scores(net(view).float()) for net in self.nets for view in views]).mean(0)


def checkpoint_paths(option) -> list[str]:
    """``ckpt_path``: one checkpoint, or a list of them whose scores are averaged."""
    if option is None:
        raise AmirError("ckpt_path=null: give a checkpoint (.ckpt in a run's checkpoints/ folder), or a list of them")
    listed = isinstance(option, (list, tuple, ListConfig))
    paths = [str(path) for path in option] if listed else [str(option)]
    if not paths:
        raise AmirError("ckpt_path=[]: give a checkpoint, or a list of checkpoints to average")
    return paths


def _same_model_kind(modules, paths) -> None:
    """An ensemble averages scores class by class: every member must read the same front end and
    answer the same classes with the same kind of output as the first."""
    first = modules[0]
    for path, module in zip(paths[1:], modules[1:]):
        for what, mine, theirs in (
            ("class_names", list(first.hparams["class_names"]), list(module.hparams["class_names"])),
            ("objective", first.objective, module.objective),
            ("features", dict(first.hparams.get("features") or {}), dict(module.hparams.get("features") or {})),
            ("input_shape", list(first.hparams["input_shape"]), list(module.hparams["input_shape"])),
        ):
            if mine != theirs:
                raise AmirError(
                    f"ckpt_path: {path} differs from {paths[0]} in its {what} ({theirs} against {mine}); "
                    "an ensemble averages checkpoints trained on the same classes, front end and objective"
                )


def load_scorer(cfg: DictConfig) -> Scorer:
    """The checkpoint ``cfg.ckpt_path`` (or the checkpoints, averaged) with the window options of
    amir-predict's config (hop_seconds, rms_threshold, device, batch_size); amir-evaluate-recordings
    shares them."""
    paths = checkpoint_paths(cfg.ckpt_path)
    modules = [load_checkpoint(path) for path in paths]
    module = modules[0]
    stored = module.hparams.get("features") or {}
    if set(FEATURE_ATTRS) - set(stored):
        raise AmirError(
            f"ckpt_path={paths[0]}: the checkpoint lacks the front-end parameters "
            f"{sorted(set(FEATURE_ATTRS) - set(stored))}; train it with amir-train"
        )
    _same_model_kind(modules, paths)
    features = FeatureParams.from_mapping(stored)
    hop = round(float(cfg.hop_seconds) * features.sample_rate)
    if hop <= 0:
        raise AmirError(f"hop_seconds={cfg.hop_seconds}: must be positive")
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    chosen = [scoring_precision(cfg.get("precision"), m.trained_precision, device.type) for m in modules]
    if len(precisions := {precision for precision, _ in chosen}) > 1:
        raise AmirError(
            f"ckpt_path: the checkpoints would be scored in different precisions ({sorted(precisions)}); "
            "choose one for all, e.g. precision=32-true"
        )
    precision, why = chosen[0]
    log.info("precision %s (%s) on %s", precision, why, device)
    # channels_last: faster convolutions on a CPU (docs/performance.md, "Measurements behind the code").
    nets = [m.net.to(device, memory_format=torch.channels_last).eval() for m in modules]
    first_conv = next(layer for layer in nets[0].modules() if isinstance(layer, torch.nn.Conv2d))
    window_bytes = first_conv.out_channels * math.prod(module.hparams["input_shape"]) * 4  # float32, "same" padding
    settings = ClipSettings(features, silence_gate(cfg.rms_threshold, stored), hop_samples=hop, pad_short=True)
    warps = tta_warps(cfg.tta_semitones, modules)
    if warps:
        log.info("test-time augmentation: each window scored warped by %s semitones, the scores averaged", warps)
    return Scorer(
        nets,
        list(module.hparams["class_names"]),
        features,
        settings,
        device,
        _batch_size(cfg.batch_size, device, window_bytes, last_level_cache_bytes()),
        precision,
        module.objective,
        paths,
        warps,
    )


def score_windows(
    scorer: Scorer, files: list[Path], num_workers: int, windows_per_task: int, progress: bool = False
) -> list[FileResult]:
    """Every file's window scores (``FileResult.window_probs``; status ok, silent or error)."""
    results = [FileResult(str(path)) for path in files]
    tasks = make_tasks(_probe_all(files, scorer.settings, results), scorer.settings, windows_per_task)
    probabilities: dict[int, list[np.ndarray]] = {i: [] for i in range(len(files))}
    bar = tqdm(total=len(tasks), unit="task", desc="windows", disable=not progress, dynamic_ncols=True)
    # The net keeps this process's threads; the workers decode and compute the mels.
    for windows in run_tasks(tasks, scorer.settings, num_workers, one_thread_here=False):
        bar.update()
        result = results[windows.task.file_index]
        result.silent_windows += windows.silent
        if windows.error:
            result.status, result.error = "error", windows.error
        if windows.mels is not None:
            result.offsets += windows.offsets
            for start in range(0, len(windows.mels), scorer.batch_size):
                batch = torch.from_numpy(windows.mels[start : start + scorer.batch_size]).unsqueeze(1)
                batch = batch.to(scorer.device, memory_format=torch.channels_last)
                with torch.inference_mode(), autocast(scorer.device, scorer.precision):
                    probabilities[windows.task.file_index].append(scorer.window_scores(batch).cpu().numpy())
    bar.close()
    for index, result in enumerate(results):
        if result.status == "error" and not probabilities[index]:
            continue
        if not probabilities[index]:
            result.status = "silent"
            continue
        result.status = "ok"  # a file that failed part-way keeps its windows and its error note
        result.window_probs = np.concatenate(probabilities[index])
        result.windows_used = len(result.window_probs)
        result.scores = {rule: aggregate(result.window_probs, rule) for rule in AGGREGATIONS}
    return results


def predict(cfg: DictConfig) -> list[dict]:
    scorer = load_scorer(cfg)
    files, problems = find_inputs(cfg.inputs)
    results = score_windows(scorer, files, cfg.num_workers, cfg.windows_per_task, cfg.progress)
    run_dir = Path(cfg.paths.output_dir)
    rows = [_row(r, scorer, cfg) for r in results] + problems
    _write_outputs(run_dir, rows)
    if cfg.timeline:
        pictures = write_timelines(
            run_dir / "timelines", results, scorer.class_names, scorer.features, float(cfg.hop_seconds), cfg.aggregation
        )
        if pictures:
            print(f"timelines: {len(pictures)} PNG files in {run_dir / 'timelines'}")
    _print_table(rows)
    if len(scorer.nets) > 1:
        print(f"scores: the mean of {len(scorer.nets)} checkpoints' scores (an ensemble)")
    if scorer.tta_semitones:
        print(
            f"scores: each window's mean over its copies warped by {list(scorer.tta_semitones)} semitones "
            "(test-time augmentation; tta_semitones=[] for the net alone)"
        )
    if scorer.objective == "sigmoid":
        print("scores: a sigmoid per class (each instrument present or not on its own; they do not sum to 1)")
    print(f"predictions: {run_dir / 'predictions.csv'}, {run_dir / 'predictions.json'}")
    if not any(row["status"] in ("ok", "silent") for row in rows):
        details = "; ".join(f"{row['file']}: {row['error']}" for row in rows[:5]) or "no input files"
        raise AmirError(f"nothing could be processed ({details})")
    return rows


def write_timelines(
    folder: Path,
    results: list[FileResult],
    class_names: list[str],
    features: FeatureParams,
    hop_seconds: float,
    rule: str,
) -> list[Path]:
    """One PNG per scored file: class probabilities over time (plots.plot_timeline), named after the
    file (a number added where two files share a name)."""
    folder.mkdir(parents=True, exist_ok=True)
    window_seconds = features.clip_samples / features.sample_rate
    written, taken = [], set()
    for result in results:
        if result.window_probs is None:
            continue
        stem, number = Path(result.file).stem, 1
        name = f"{stem}.png"
        while name in taken:
            number += 1
            name = f"{stem}-{number}.png"
        taken.add(name)
        figure = plot_timeline(
            result.window_probs,
            result.offsets,
            hop_seconds,
            window_seconds,
            result.windows_used + result.silent_windows,
            class_names,
            result.scores[rule],
            Path(result.file).name,
        )
        path = folder / name
        atomic_write(path, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=100))
        written.append(path)
    return written


def _batch_size(value, device: torch.device, window_activation_bytes: int, cache_bytes: int | None) -> int:
    """Windows per forward pass. ``auto``: 256 on a GPU; on a CPU as many windows as keep the first
    layer's output in 80 % of the CPU's last-level cache between the convolution and the pooling
    (where the time per window was lowest when measured: docs/performance.md, "Measurements behind the code")."""
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


def _row(result: FileResult, scorer: Scorer, cfg) -> dict:
    class_names = scorer.class_names
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
        row["aggregation"] = str(cfg.aggregation)
        # softmax: one instrument, scores sum to 1 | sigmoid: each class on its own
        row["model_output"] = scorer.objective
        row["tta_semitones"] = list(scorer.tta_semitones)  # the test-time warps averaged ([]: none)
        row["scores"] = {
            rule: dict(zip(class_names, np.round(values, 4).tolist())) for rule, values in result.scores.items()
        }
    if cfg.timeline and result.window_probs is not None:
        row["window_offsets_s"] = [round(o, 3) for o in result.offsets]
        row["window_probabilities"] = result.window_probs.round(4).tolist()
    return row


PREDICTION_COLUMNS = [
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


def _write_outputs(run_dir: Path, rows: list[dict]) -> None:
    """predictions.json and predictions.csv, each under a temporary name and renamed when complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "predictions.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=2) + "\n"))

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PREDICTION_COLUMNS)
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

    atomic_write(run_dir / "predictions.csv", write_csv)


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
