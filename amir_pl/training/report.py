"""Reports of computed metrics: metrics.json, per_class.csv, confusion_matrix.{csv,png}, TensorBoard.

Every number here comes from torchmetrics' computed values; this module only
lays them out (the per-class table as in the thesis's Tables 4.1 and 4.2).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from amir_pl.core.files import atomic_write

REPORT_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")
MACRO_AVERAGED = ("precision", "recall", "f1")


def with_macro_averages(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``values`` plus ``<name>_macro``: the mean of torchmetrics' per-class vector over every class.

    torchmetrics' own ``average="macro"`` leaves out a class absent from both targets and
    predictions (its ``zero_division`` does not change that), while the per-class table lists it
    as 0. The thesis's Tables 4.1/4.2 average over all listed classes, so every report
    (metrics.json, per_class.csv, TensorBoard) uses this one mean.
    """
    return {**values, **{f"{name}_macro": values[name].float().mean() for name in MACRO_AVERAGED}}


def split_summary(values: Mapping[str, torch.Tensor], class_names: Sequence[str]) -> dict:
    """One split's entry of metrics.json from computed metric values."""
    values = with_macro_averages(values)
    matrix = values["confusion_matrix"].long()
    support = matrix.sum(dim=1)
    return {
        "n": int(matrix.sum()),
        "top1_error": float(1 - values["accuracy"]),
        "accuracy": float(values["accuracy"]),
        "precision_macro": float(values["precision_macro"]),
        "recall_macro": float(values["recall_macro"]),
        "f1_macro": float(values["f1_macro"]),
        "per_class": {
            name: {
                "precision": float(values["precision"][i]),
                "recall": float(values["recall"][i]),
                "f1": float(values["f1"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
        **_multilabel(values),
    }


def _multilabel(values: Mapping[str, torch.Tensor]) -> dict:
    """Which instruments are predominant (when computed): micro/macro F1 at 0.5 and LRAP against the
    clips' multi-hot targets, on the model's scores (sigmoids, or a softmax model's probabilities)."""
    if "lrap" not in values:
        return {}
    return {
        "multilabel": {
            "threshold": 0.5,
            "f1_micro": float(values["multilabel_f1_micro"]),
            "f1_macro": float(values["multilabel_f1_macro"]),
            "lrap": float(values["lrap"]),
        }
    }


def _per_class_rows(summary: Mapping) -> list[list]:
    rows = [
        [name, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", c["support"]]
        for name, c in summary["per_class"].items()
    ]
    rows.append(
        [
            "average (macro)",
            f"{summary['precision_macro']:.4f}",
            f"{summary['recall_macro']:.4f}",
            f"{summary['f1_macro']:.4f}",
            summary["n"],
        ]
    )
    return rows


PER_CLASS_HEADER = ["class", "precision", "recall", "f1", "support"]


def write_reports(
    run_dir: str | os.PathLike, summaries: Mapping[str, Mapping], class_names: Sequence[str]
) -> list[Path]:
    """Write the four report files for ``{split: split_summary(...)}`` into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [run_dir / name for name in REPORT_FILES]

    def metrics_json(tmp):
        Path(tmp).write_text(json.dumps(summaries, indent=2) + "\n")

    def per_class_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", *PER_CLASS_HEADER])
            for split, summary in summaries.items():
                writer.writerows([split, *row] for row in _per_class_rows(summary))

    def confusion_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "true \\ predicted", *class_names])
            for split, summary in summaries.items():
                for name, row in zip(class_names, summary["confusion_matrix"]):
                    writer.writerow([split, name, *row])

    def confusion_png(tmp):
        figure = plot_confusion_matrices({split: s["confusion_matrix"] for split, s in summaries.items()}, class_names)
        figure.savefig(tmp, format="png", dpi=figure.dpi)

    for path, write in zip(paths, (metrics_json, per_class_csv, confusion_csv, confusion_png)):
        atomic_write(path, write)
    return paths


def publish(run_dir: str | os.PathLike, summaries: Mapping[str, Mapping], class_names: Sequence[str]) -> None:
    """Write the report files and print each split's table."""
    write_reports(run_dir, summaries, class_names)
    for split, summary in summaries.items():
        print(format_summary(split, summary))
    print(f"reports: {run_dir}")


# A confusion matrix is drawn to be read where TensorBoard shows it: its image is fitted to a card
# about 500 pixels wide, so a panel is 640 pixels (6.4 in at 100 dpi) and the counts fill their cells.
PANEL_INCHES = 6.4
CARD_PIXELS = 500


def plot_confusion_matrices(matrices: Mapping[str, Sequence[Sequence[int]]], class_names: Sequence[str]):
    """One panel per split: counts in cells, class names on both axes, rows true, columns predicted.

    Sized for 12-20 classes at TensorBoard's default image size: each panel has the same width
    whatever the number of classes, and the counts' font is as large as the widest count allows
    in a cell. A bare matplotlib ``Figure``: no pyplot, so no global backend is chosen or switched
    (importing this module does not import matplotlib) and nothing needs closing.
    """
    from matplotlib.figure import Figure

    n = len(class_names)
    figure = Figure(figsize=(PANEL_INCHES * len(matrices), PANEL_INCHES), dpi=100)
    axes = figure.subplots(1, len(matrices), squeeze=False)
    label_size = 11 if n <= 14 else 9
    for axis, (split, matrix) in zip(axes[0], matrices.items()):
        counts = torch.as_tensor(matrix)
        axis.imshow(counts, cmap="Blues")
        threshold = counts.max().item() / 2 if counts.numel() else 0
        digits = len(str(int(counts.max()))) if counts.numel() else 1
        # the plot area is about 70 % of the panel; a digit is about 0.55 em wide, plus a margin
        cell_points = 0.7 * PANEL_INCHES * 72 / max(n, 1)
        count_size = max(6.0, min(14.0, cell_points / (0.6 * digits + 0.4)))
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j])
                axis.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=count_size,
                    color="white" if value > threshold else "black",
                )
        axis.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_size)
        axis.set_yticks(range(n), class_names, fontsize=label_size)
        axis.set_xlabel("predicted", fontsize=label_size)
        axis.set_ylabel("true", fontsize=label_size)
        accuracy = counts.diagonal().sum() / counts.sum().clamp(min=1)
        axis.set_title(f"{split}: n={int(counts.sum())}, top-1 error {1 - float(accuracy):.1%}", fontsize=12)
    figure.tight_layout()
    return figure


def per_class_markdown(summary: Mapping) -> str:
    """The per-class table as Markdown (TensorBoard's text tab renders it)."""
    lines = ["| " + " | ".join(PER_CLASS_HEADER) + " |", "|" + "---|" * len(PER_CLASS_HEADER)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in _per_class_rows(summary)]
    return "\n".join(lines)


def format_summary(split: str, summary: Mapping) -> str:
    """A plain-text table for the console."""
    lines = [
        f"{split}: n={summary['n']}  top-1 error {summary['top1_error']:.2%}  "
        f"macro P {summary['precision_macro']:.3f}  R {summary['recall_macro']:.3f}  F {summary['f1_macro']:.3f}"
    ]
    if "multilabel" in summary:
        ml = summary["multilabel"]
        lines.append(
            f"  multi-label ({summary.get('model_output', 'softmax')} scores): micro F1 {ml['f1_micro']:.3f}  macro F1 {ml['f1_macro']:.3f} (at {ml['threshold']})  "
            f"LRAP {ml['lrap']:.3f}"
        )
    lines.append(f"  {'class':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for row in _per_class_rows(summary):
        lines.append(f"  {row[0]:<18}{row[1]:>10}{row[2]:>10}{row[3]:>10}{row[4]:>9}")
    return "\n".join(lines)


def log_to_tensorboard(loggers, prefix: str, values: Mapping, class_names: Sequence[str], step: int) -> None:
    """The confusion matrix as an image and the per-class table as text, for each TensorBoard logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    boards = [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]
    if not boards:
        return
    summary = split_summary(values, class_names)
    figure = plot_confusion_matrices({prefix: summary["confusion_matrix"]}, class_names)
    for logger in boards:
        logger.experiment.add_figure(f"{prefix}/confusion_matrix", figure, global_step=step, close=False)
        logger.experiment.add_text(f"{prefix}/per_class", per_class_markdown(summary), global_step=step)
