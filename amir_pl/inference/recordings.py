"""Multi-label scores of labelled recordings (amir-evaluate-recordings): the IRMAS test protocol.

Each recording lists one or more predominant instruments (IRMAS-TestingData: ``<name>.txt`` beside
``<name>.wav``, one label per line; or a manifest CSV ``path,labels`` with labels separated by
``;``). Windows are scored and aggregated per file by amir-predict's code (``han``: window scores
summed, divided by their maximum; Han et al. 2016; the scores are a softmax model's probabilities or
a sigmoid model's per-class ones, and the report says which), a class is predicted where its file score
exceeds the threshold, and torchmetrics' multilabel metrics compare predictions with labels:
micro and macro precision, recall and F1, per class, and the threshold-free label ranking average
precision (LRAP) and mean average precision. A threshold is chosen (best micro F1) only on a
validation list that shares no file with the test list.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchmetrics.classification import MultilabelF1Score, MultilabelRankingAveragePrecision
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_precision_recall_curve,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_ranking_average_precision,
    multilabel_recall,
)
from torchmetrics.wrappers import BootStrapper

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write, read_table
from amir_pl.core.labels import ALIASES, CLASS_NAMES, IRMAS_CODES, canonical_name
from amir_pl.inference.plots import plot_per_class_f1, plot_precision_recall
from amir_pl.inference.predict import aggregate, find_inputs, load_scorer, score_windows

log = logging.getLogger(__name__)

LABEL_POLICIES = ("drop", "skip")
REPORT_FILES = ("metrics.json", "per_class.csv", "per_file.csv", "precision_recall.png", "per_class_f1.png")


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    labels: tuple[str, ...]  # as written (IRMAS codes or class names)


def read_labelled(inputs) -> tuple[list[LabelledFile], list[dict]]:
    """Recordings with their labels from folders (``<name>.txt`` beside each audio file, searched
    recursively), audio files (their ``.txt`` beside them) and manifest CSVs (``path,labels``; paths
    relative to the manifest). Files without labels are returned as problems, not raised; a file
    named twice is read once."""
    found, problems = [], []
    for entry in [inputs] if isinstance(inputs, str) else list(inputs):
        path = Path(entry).expanduser()
        if path.is_file() and path.suffix.lower() == ".csv":
            found += read_manifest(path, problems)
            continue
        audio, missing = find_inputs(str(path))
        problems += [{"file": p["file"], "reason": p["error"]} for p in missing]
        for file in audio:
            text = file.with_suffix(".txt")
            try:
                labels = _label_lines(text.read_text(encoding="utf-8-sig")) if text.is_file() else ()
            except (OSError, UnicodeDecodeError) as error:
                problems.append({"file": str(file), "reason": f"{text.name} not readable as UTF-8 text ({error})"})
                continue
            if labels:
                found.append(LabelledFile(file, labels))
            else:
                reason = "its labels file is empty" if text.is_file() else "no labels file"
                problems.append({"file": str(file), "reason": f"{reason} ({text.name} beside it)"})
    unique = {file.path.resolve(): file for file in reversed(found)}  # the first mention wins
    return [file for file in found if unique[file.path.resolve()] is file], problems


def _label_lines(text: str) -> tuple[str, ...]:
    """One label per line (IRMAS writes e.g. ``gel\t`` with Windows line ends)."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_manifest(path: Path, problems: list[dict]) -> list[LabelledFile]:
    fields, rows = read_table(path)
    if not {"path", "labels"} <= set(fields):
        raise AmirError(
            f"{path}: a manifest of labelled recordings needs the columns path,labels (labels separated "
            f"by ';'); it has {fields}"
        )
    found = []
    for line, row in rows:
        if not row.get("path"):
            problems.append({"file": f"{path}, line {line}", "reason": "no path"})
            continue
        file = Path(row["path"]).expanduser()
        file = file if file.is_absolute() else path.parent / file
        labels = tuple(label.strip() for label in row.get("labels", "").split(";") if label.strip())
        if not file.is_file():
            problems.append({"file": str(file), "reason": f"listed in {path.name} (line {line}) but not found"})
        elif not labels:
            problems.append({"file": str(file), "reason": f"no labels in {path.name} (line {line})"})
        else:
            found.append(LabelledFile(file, labels))
    return found


def evaluated_classes(option, model_classes: Sequence[str]) -> list[str]:
    """``eval_classes``: ``model`` (every class of the model), ``irmas`` (the model's classes that
    IRMAS labels: no drums, no bass) or a list of class names or aliases."""
    if option == "model":
        return list(model_classes)
    if option == "irmas":
        return [name for name in model_classes if name in IRMAS_CODES.values()]
    if isinstance(option, str):
        raise AmirError(f"eval_classes={option!r}: expected model, irmas or a list of classes, e.g. [piano,gac]")
    names = [canonical_name(name) for name in option]
    if not names or (missing := [name for name in names if name not in model_classes]):
        raise AmirError(
            f"eval_classes={list(option)}: {missing or 'empty'}; the model's classes are {list(model_classes)}"
        )
    return [name for name in model_classes if name in names]


def resolve_labels(
    files: Sequence[LabelledFile], class_names: Sequence[str], policy: str
) -> tuple[list[tuple[Path, list[int]]], Counter, list[dict]]:
    """Labels to indices of ``class_names`` (IRMAS codes and other aliases accepted). A known
    instrument outside them (IRMAS ``cla`` for the thesis's classes) is dropped (``drop``; a file
    left without labels is skipped) or skips its file (``skip``); a label that is no instrument
    amir-pl knows (a typo) always skips its file. Returns the kept files, the count of each outside
    label, and the skipped files."""
    if policy not in LABEL_POLICIES:
        raise AmirError(f"unknown_labels={policy!r}: expected one of {LABEL_POLICIES}")
    index = {name: i for i, name in enumerate(class_names)}
    known_anywhere = set(CLASS_NAMES) | set(ALIASES.values()) | set(class_names)
    kept, outside, skipped = [], Counter(), []
    for file in files:
        names = [canonical_name(label) for label in file.labels]
        unrecognised = [label for label, name in zip(file.labels, names) if name not in known_anywhere]
        unknown = [label for label, name in zip(file.labels, names) if name not in index]
        known = sorted({index[name] for name in names if name in index})
        if unrecognised:
            reason = f"labels that name no instrument: {unrecognised} (IRMAS codes or class names, one per line)"
            skipped.append({"file": str(file.path), "reason": reason})
            continue
        outside.update(canonical_name(label) for label in unknown)
        if unknown and policy == "skip":
            skipped.append({"file": str(file.path), "reason": f"labels outside the evaluated classes: {unknown}"})
        elif not known:
            reason = f"no label of the evaluated classes ({list(file.labels)})"
            skipped.append({"file": str(file.path), "reason": reason})
        else:
            kept.append((file.path, known))
    return kept, outside, skipped


def multilabel_summary(
    scores: torch.Tensor, target: torch.Tensor, threshold: float, class_names: Sequence[str]
) -> dict:
    """Micro and macro P/R/F1 at ``threshold``, per class, LRAP and mean average precision.

    Macro averages run over the classes that have at least one label in ``target`` (as the IRMAS
    papers average over IRMAS's classes; a class of the model that the list never names would count
    as 0 otherwise); the classes left out are listed."""
    n_classes = len(class_names)
    target = target.int()
    if scores.numel() and not (0 <= float(scores.min()) and float(scores.max()) <= 1):
        raise AmirError("file scores outside [0, 1]: torchmetrics would read them as logits")  # a new rule's bug
    options = {"num_labels": n_classes, "threshold": threshold}
    support = target.sum(dim=0)
    present = support > 0
    average_precision = torch.full((n_classes,), float("nan"))  # undefined for a class without labels
    for i in present.nonzero().flatten().tolist():
        average_precision[i] = binary_average_precision(scores[:, i], target[:, i])
    per_class = {
        "precision": multilabel_precision(scores, target, average="none", **options),
        "recall": multilabel_recall(scores, target, average="none", **options),
        "f1": multilabel_f1_score(scores, target, average="none", **options),
        "average_precision": average_precision,
    }
    predicted = (scores > threshold).sum(dim=0)  # torchmetrics' rule: above, not at
    return {
        "n": len(scores),
        "labels": int(target.sum()),
        "threshold": float(threshold),
        "micro": {
            "precision": float(multilabel_precision(scores, target, average="micro", **options)),
            "recall": float(multilabel_recall(scores, target, average="micro", **options)),
            "f1": float(multilabel_f1_score(scores, target, average="micro", **options)),
        },
        "macro": {name: float(per_class[name][present].mean()) for name in ("precision", "recall", "f1")},
        "macro_over": [name for name, keep in zip(class_names, present.tolist()) if keep],
        "lrap": float(multilabel_ranking_average_precision(scores, target, num_labels=n_classes)),
        "map_macro": float(per_class["average_precision"][present].mean()),
        "ap_micro": float(binary_average_precision(scores.flatten(), target.flatten())),
        "per_class": {
            name: {
                "precision": float(per_class["precision"][i]),
                "recall": float(per_class["recall"][i]),
                "f1": float(per_class["f1"][i]),
                "average_precision": float(per_class["average_precision"][i]) if present[i] else None,
                "support": int(support[i]),
                "predicted": int(predicted[i]),
            }
            for i, name in enumerate(class_names)
        },
    }


def bootstrap_interval(
    scores: torch.Tensor, target: torch.Tensor, threshold: float, resamples: int, seed: int, level: float = 0.95
) -> dict:
    """How precisely this list of files measures micro F1 and LRAP: the files drawn with replacement
    ``resamples`` times (torchmetrics' BootStrapper), the central ``level`` of the draws and their spread.
    Seeded (the same draws for both), and the global random state is left as it was."""
    n_classes = target.shape[1]
    metrics = {
        "micro_f1": MultilabelF1Score(n_classes, threshold=threshold, average="micro"),
        "lrap": MultilabelRankingAveragePrecision(n_classes),
    }
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2])
    result = {"resamples": int(resamples), "level": float(level), "seed": int(seed)}
    with torch.random.fork_rng(devices=[]):
        for name, metric in metrics.items():
            torch.manual_seed(seed)  # the same draws of files for both figures
            booted = BootStrapper(metric, num_bootstraps=resamples, quantile=quantiles, sampling_strategy="multinomial")
            booted.update(scores, target.int())
            drawn = booted.compute()
            result[name] = {"interval": [float(q) for q in drawn["quantile"]], "std": float(drawn["std"])}
    return result


def threshold_sweep(scores: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float]) -> list[dict]:
    """Micro and macro F1 at each threshold."""
    rows = []
    present = target.sum(dim=0) > 0
    for threshold in thresholds:
        options = {"num_labels": target.shape[1], "threshold": float(threshold)}
        per_class = multilabel_f1_score(scores, target.int(), average="none", **options)
        micro = multilabel_f1_score(scores, target.int(), average="micro", **options)
        rows.append(
            {"threshold": float(threshold), "f1_micro": float(micro), "f1_macro": float(per_class[present].mean())}
        )
    return rows


def best_threshold(sweep: Sequence[Mapping]) -> float:
    """The threshold of the highest micro F1 (the lowest such threshold on a tie)."""
    return max(sweep, key=lambda row: (row["f1_micro"], -row["threshold"]))["threshold"]


@dataclass
class ScoredList:
    """One list of labelled recordings, scored."""

    files: list[str]
    labels: list[list[int]]
    scores: torch.Tensor  # (files, classes) aggregated scores
    target: torch.Tensor  # (files, classes) 0/1
    outside: Counter
    skipped: list[dict]
    windows: int
    warnings: list[dict]  # files scored on part of their windows (a decoding error part-way)


def read_list(cfg: DictConfig, option: str, classes: Sequence[str]) -> tuple[list, Counter, list[dict]]:
    """The labelled recordings of ``cfg.<option>`` (``inputs`` or ``val_inputs``), labels resolved."""
    labelled, problems = read_labelled(cfg[option])
    kept, outside, skipped = resolve_labels(labelled, classes, cfg.unknown_labels)
    return kept, outside, problems + skipped


def score_list(
    cfg: DictConfig, scorer, option: str, listed: tuple[list, Counter, list[dict]], columns: list[int]
) -> ScoredList:
    """Window scores aggregated per file by ``cfg.aggregation`` over the evaluated ``columns`` of the
    model's classes (``han`` divides by the largest of those, as a net with only them would)."""
    kept, outside, skipped = listed
    results = score_windows(scorer, [path for path, _ in kept], cfg.num_workers, cfg.windows_per_task, cfg.progress)
    files, labels, rows, windows, warnings = [], [], [], 0, []
    for (path, known), result in zip(kept, results):
        if result.window_probs is None:
            skipped.append({"file": str(path), "reason": result.error or "every window is under the silence gate"})
            continue
        if result.error:  # failed part-way: scored on the windows read before the failure
            warnings.append({"file": str(path), "reason": f"scored on {result.windows_used} windows: {result.error}"})
        files.append(str(path))
        labels.append(known)
        rows.append(aggregate(result.window_probs[:, columns], str(cfg.aggregation)))
        windows += result.windows_used
    if not files:
        details = "; ".join(f"{p['file']}: {p['reason']}" for p in skipped[:5]) or "nothing found"
        raise AmirError(f"{option}={cfg[option]}: no labelled recording could be scored ({details})")
    target = torch.zeros(len(files), len(columns), dtype=torch.int)
    for row, known in enumerate(labels):
        target[row, known] = 1
    scores = torch.from_numpy(np.stack(rows)).float()
    return ScoredList(files, labels, scores, target, outside, skipped, windows, warnings)


def evaluate_recordings(cfg: DictConfig) -> dict[str, dict]:
    if cfg.threshold == "val" and not cfg.val_inputs:
        raise AmirError(
            "threshold=val chooses the threshold on a validation list: add val_inputs=<labelled recordings "
            "other than the test files>, or give a number, e.g. threshold=0.5"
        )
    if cfg.threshold != "val" and not (isinstance(cfg.threshold, (int, float)) and 0 < cfg.threshold < 1):
        raise AmirError(f"threshold={cfg.threshold!r}: expected a number in (0, 1) or 'val'")
    if cfg.bootstrap == 1 or cfg.bootstrap < 0:
        raise AmirError(
            f"bootstrap={cfg.bootstrap}: give the number of resamples (2 or more, e.g. 1000), or 0 for none"
        )
    if cfg.val_inputs and not (cfg.sweep_thresholds and all(0 < t < 1 for t in cfg.sweep_thresholds)):
        raise AmirError(f"sweep_thresholds={list(cfg.sweep_thresholds)}: give one or more numbers in (0, 1)")
    scorer = load_scorer(cfg)
    classes = evaluated_classes(cfg.eval_classes, scorer.class_names)
    columns = [scorer.class_names.index(name) for name in classes]
    listed = {"test": read_list(cfg, "inputs", classes)}
    if cfg.val_inputs:
        listed["val"] = read_list(cfg, "val_inputs", classes)
        val_files = {path.resolve() for path, _ in listed["val"][0]}
        if shared := sorted(str(path) for path, _ in listed["test"][0] if path.resolve() in val_files):
            raise AmirError(
                f"val_inputs and inputs share {len(shared)} files (e.g. {shared[0]}): a threshold chosen on "
                "the test files would flatter the result; give a separate validation list (IRMAS: other songs)"
            )
    lists = {}
    for split, option in (("val", "val_inputs"), ("test", "inputs")):
        if split in listed:
            lists[split] = score_list(cfg, scorer, option, listed[split], columns)
    rule = str(cfg.aggregation)
    summaries, sweep = {}, None
    if "val" in lists:
        sweep = threshold_sweep(lists["val"].scores, lists["val"].target, list(cfg.sweep_thresholds))
    threshold, chosen_on = (
        (best_threshold(sweep), f"val_inputs ({len(lists['val'].files)} files): best micro F1")
        if cfg.threshold == "val"
        else (float(cfg.threshold), "the threshold option")
    )
    for split, scored in lists.items():
        summary = multilabel_summary(scored.scores, scored.target, threshold, classes)
        summary.update(
            threshold_chosen_on=chosen_on,
            aggregation=rule,
            model_output=scorer.objective,
            checkpoints=scorer.checkpoints,  # more than one: their window scores averaged (an ensemble)
            hop_seconds=float(cfg.hop_seconds),
            tta_semitones=list(scorer.tta_semitones),  # each window also scored warped by these, averaged
            windows=scored.windows,
            unknown_labels={"policy": str(cfg.unknown_labels), "outside_classes": dict(scored.outside)},
            skipped=scored.skipped,
            warnings=scored.warnings,
            classes=list(classes),
        )
        if cfg.bootstrap:
            summary["bootstrap"] = bootstrap_interval(scored.scores, scored.target, threshold, cfg.bootstrap, cfg.seed)
        if split == "val":
            summary["threshold_sweep"] = sweep
            summary["best_threshold"] = best_threshold(sweep)
        summaries[split] = summary
    run_dir = Path(cfg.paths.output_dir)
    write_reports(run_dir, summaries, lists, classes)
    if cfg.tensorboard:
        log_to_tensorboard(run_dir / "tensorboard", summaries, lists, classes)
    for split, summary in summaries.items():
        print(format_summary(split, summary))
    print(f"reports: {run_dir}")
    return summaries


def write_reports(
    run_dir: Path, summaries: Mapping[str, dict], lists: Mapping[str, ScoredList], class_names: Sequence[str]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)

    def metrics_json(tmp):
        Path(tmp).write_text(json.dumps(summaries, indent=2) + "\n")

    def per_class_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "class", "precision", "recall", "f1", "average_precision", "support"])
            for split, summary in summaries.items():
                for name, c in summary["per_class"].items():
                    ap = "" if c["average_precision"] is None else f"{c['average_precision']:.4f}"
                    row = [f"{c[key]:.4f}" for key in ("precision", "recall", "f1")]
                    writer.writerow([split, name, *row, ap, c["support"]])
                for average in ("micro", "macro"):
                    values = summary[average]
                    row = [f"{values[key]:.4f}" for key in ("precision", "recall", "f1")]
                    writer.writerow([split, f"average ({average})", *row, "", summary["labels"]])

    def per_file_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "file", "labels", "predicted", *class_names])
            for split, scored in lists.items():
                threshold = summaries[split]["threshold"]
                for file, labels, scores in zip(scored.files, scored.labels, scored.scores.tolist()):
                    predicted = [name for name, score in zip(class_names, scores) if score > threshold]
                    names = ";".join(class_names[i] for i in labels)
                    writer.writerow([split, file, names, ";".join(predicted), *(f"{s:.4f}" for s in scores)])

    def precision_recall_png(tmp):
        plot_precision_recall(_micro_curves(summaries, lists)).savefig(tmp, format="png", dpi=100)

    def per_class_f1_png(tmp):
        figure = plot_per_class_f1(_f1_by_split(summaries), class_names)
        figure.savefig(tmp, format="png", dpi=100)

    writers = (metrics_json, per_class_csv, per_file_csv, precision_recall_png, per_class_f1_png)
    for name, write in zip(REPORT_FILES, writers):
        atomic_write(run_dir / name, write)


def _micro_curves(summaries, lists) -> dict:
    curves = {}
    for split, scored in lists.items():
        precision, recall, _ = binary_precision_recall_curve(scored.scores.flatten(), scored.target.flatten())
        curves[split] = (precision.numpy(), recall.numpy(), summaries[split]["ap_micro"])
    return curves


def _f1_by_split(summaries) -> dict:
    return {
        split: {name: c["f1"] for name, c in summary["per_class"].items() if c["support"]}
        for split, summary in summaries.items()
    }


def log_to_tensorboard(
    folder: Path, summaries: Mapping[str, dict], lists: Mapping[str, ScoredList], class_names: Sequence[str]
) -> None:
    """Scalars, the two figures and a precision-recall curve per class (TensorBoard's PR curves tab)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for split, summary in summaries.items():
            for average in ("micro", "macro"):
                for name, value in summary[average].items():
                    writer.add_scalar(f"{split}/{name}_{average}", value)
            for name in ("lrap", "map_macro", "ap_micro", "threshold"):
                writer.add_scalar(f"{split}/{name}", summary[name])
            scored = lists[split]
            for i, name in enumerate(class_names):
                if summary["per_class"][name]["support"]:
                    writer.add_pr_curve(f"{split}/pr/{name}", scored.target[:, i], scored.scores[:, i])
        writer.add_figure("precision_recall", plot_precision_recall(_micro_curves(summaries, lists)))
        writer.add_figure("per_class_f1", plot_per_class_f1(_f1_by_split(summaries), class_names))
    print(f"tensorboard --logdir {folder}")


def bootstrap_line(booted: Mapping, files: str) -> str:
    """One line of a report's ``bootstrap`` entry (``bootstrap_interval``), naming what was resampled."""
    (f1_low, f1_high), (lrap_low, lrap_high) = booted["micro_f1"]["interval"], booted["lrap"]["interval"]
    return (
        f"  {100 * booted['level']:.0f} % of {booted['resamples']} resamples of {files}: "
        f"micro F1 {f1_low:.3f}-{f1_high:.3f}, LRAP {lrap_low:.3f}-{lrap_high:.3f}"
    )


def format_summary(split: str, summary: Mapping) -> str:
    micro, macro = summary["micro"], summary["macro"]
    lines = [
        f"{split}: {summary['n']} files, {summary['labels']} labels, {summary['aggregation']} aggregation of "
        f"{summary.get('model_output', 'softmax')} scores"
        + (f" (test-time warps {summary['tta_semitones']} semitones)" if summary.get("tta_semitones") else "")
        + ", "
        f"threshold {summary['threshold']:.2f} ({summary['threshold_chosen_on']})",
        f"  micro P {micro['precision']:.3f} R {micro['recall']:.3f} F1 {micro['f1']:.3f}   "
        f"macro P {macro['precision']:.3f} R {macro['recall']:.3f} F1 {macro['f1']:.3f}   "
        f"LRAP {summary['lrap']:.3f}  mAP {summary['map_macro']:.3f}",
        f"  {'class':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'AP':>8}{'support':>9}",
    ]
    if booted := summary.get("bootstrap"):
        lines.insert(2, bootstrap_line(booted, "the files"))
    for name, c in summary["per_class"].items():
        ap = "-" if c["average_precision"] is None else f"{c['average_precision']:.3f}"
        lines.append(f"  {name:<18}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1']:>10.3f}{ap:>8}{c['support']:>9}")
    outside = summary["unknown_labels"]["outside_classes"]
    if outside:
        lines.append(f"  labels outside the evaluated classes ({summary['unknown_labels']['policy']}): {outside}")
    if summary["warnings"]:
        lines.append(f"  {len(summary['warnings'])} files scored on part of their windows (metrics.json lists them)")
    if summary["skipped"]:
        lines.append(f"  skipped {len(summary['skipped'])} files (metrics.json lists them)")
    return "\n".join(lines)
