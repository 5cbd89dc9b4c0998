"""Pictures of predictions: class probabilities over time (amir-predict timeline=true), and the
precision-recall curves and per-class F1 of amir-evaluate-recordings.

Bare matplotlib ``Figure`` objects (no pyplot: no global backend is chosen, nothing needs closing),
sized to be read at TensorBoard's default image size and in a file viewer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

TOP_LABELLED = 3  # classes named on a timeline beside their file score


def plot_timeline(
    window_probs: np.ndarray,
    offsets: Sequence[float],
    hop_seconds: float,
    window_seconds: float,
    total_windows: int,
    class_names: Sequence[str],
    file_scores: np.ndarray,
    title: str,
):
    """One row per class, one column per window position of the file (``total_windows`` of them,
    one every ``hop_seconds``, at the window's centre in seconds), the colour the window's score
    probability; silent windows (not scored) stay blank, at the start and end too. The file's top
    classes are in bold with their aggregated score, so a person sees where each instrument plays."""
    from matplotlib.figure import Figure

    probs = np.asarray(window_probs, dtype=float)
    hop = float(hop_seconds)
    columns = np.round(np.asarray(offsets, dtype=float) / hop).astype(int)
    grid = np.full((len(class_names), max(int(total_windows), int(columns.max()) + 1)), np.nan)
    grid[:, columns] = probs.T
    top = [int(i) for i in np.argsort(-np.asarray(file_scores), kind="stable")[:TOP_LABELLED]]

    figure = Figure(figsize=(10, 1.2 + 0.32 * len(class_names)))
    axis = figure.subplots()
    first = window_seconds / 2  # the centre of the first window
    start, end = first - hop / 2, first + (grid.shape[1] - 0.5) * hop
    image = axis.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        vmin=0.0,
        vmax=1.0,
        extent=(start, end, len(class_names) - 0.5, -0.5),
    )
    labels = [f"{name}  {file_scores[i]:.2f}" if i in top else name for i, name in enumerate(class_names)]
    axis.set_yticks(range(len(class_names)), labels, fontsize=10)
    for i, tick in enumerate(axis.get_yticklabels()):
        if i in top:
            tick.set_fontweight("bold")
    axis.set_xlabel("time (s), window centres")
    axis.set_title(f"{title}: " + ", ".join(class_names[i] for i in top), fontsize=11)
    figure.colorbar(image, ax=axis, label="probability", fraction=0.03, pad=0.01)
    figure.tight_layout()
    return figure


def plot_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]):
    """One curve per split: ``{split: (precision, recall, average precision)}`` (micro, over every
    file and class)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5))
    axis = figure.subplots()
    for split, (precision, recall, average_precision) in curves.items():
        axis.plot(recall, precision, label=f"{split} (micro AP {average_precision:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title("precision-recall over files and classes (micro)")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    figure.tight_layout()
    return figure


def plot_per_class_f1(values: Mapping[str, Mapping[str, float]], class_names: Sequence[str]):
    """Grouped bars: ``{split: {class: F1}}``; a class a split has no label of is left out of it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.5 + 0.6 * len(class_names), 4.5))
    axis = figure.subplots()
    width = 0.8 / max(1, len(values))
    for k, (split, per_class) in enumerate(values.items()):
        xs = [i + k * width for i, name in enumerate(class_names) if name in per_class]
        axis.bar(xs, [per_class[name] for name in class_names if name in per_class], width, label=split)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(class_names))], class_names, rotation=45, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("F1")
    axis.set_title("F1 per class")
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure
