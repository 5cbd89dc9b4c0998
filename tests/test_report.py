import csv
import json

import pytest
import torch

from amir_pl.training import report
from amir_pl.training.module import classification_metrics

CLASSES = ["drums", "flute", "piano"]
# rows true, columns predicted:
#   drums: 2 right, 1 as flute; flute: 1 right, 1 as piano; piano: 1 right
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2])
PREDICTIONS = torch.tensor([0, 0, 1, 1, 2, 2])
MATRIX = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
PRECISION = [2 / 2, 1 / 2, 1 / 2]  # column sums 2, 2, 2
RECALL = [2 / 3, 1 / 2, 1 / 1]  # row sums 3, 2, 1
F1 = [2 * p * r / (p + r) for p, r in zip(PRECISION, RECALL)]


def _summary(classes=CLASSES):
    metrics = classification_metrics(len(classes))
    logits = torch.nn.functional.one_hot(PREDICTIONS, len(classes)).float()
    # update in two batches, as an evaluation loop would
    metrics.update(logits[:4], TARGETS[:4])
    metrics.update(logits[4:], TARGETS[4:])
    return report.split_summary(metrics.compute(), classes)


def test_metrics_json_equals_hand_worked_confusion_matrix(tmp_path):
    report.write_reports(tmp_path, {"test": _summary()}, CLASSES)
    test = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert test["n"] == 6
    assert test["confusion_matrix"] == MATRIX
    assert test["accuracy"] == pytest.approx(4 / 6)
    assert test["top1_error"] == pytest.approx(2 / 6)
    assert test["precision_macro"] == pytest.approx(sum(PRECISION) / 3)
    assert test["recall_macro"] == pytest.approx(sum(RECALL) / 3)
    assert test["f1_macro"] == pytest.approx(sum(F1) / 3)
    for i, name in enumerate(CLASSES):
        assert test["per_class"][name] == pytest.approx(
            {"precision": PRECISION[i], "recall": RECALL[i], "f1": F1[i], "support": [3, 2, 1][i]}
        )


def test_macro_averages_count_a_class_absent_from_targets_and_predictions(tmp_path):
    # violin: no clip, never predicted. torchmetrics' macro average leaves it out (sum / 3); the
    # per-class table lists it as 0, and the macro row averages over all four listed classes.
    classes = [*CLASSES, "violin"]
    report.write_reports(tmp_path, {"test": _summary(classes)}, classes)
    test = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert test["per_class"]["violin"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert test["precision_macro"] == pytest.approx(sum(PRECISION) / 4)  # (1 + 1/2 + 1/2 + 0) / 4 = 0.5
    assert test["recall_macro"] == pytest.approx(sum(RECALL) / 4)  # (2/3 + 1/2 + 1 + 0) / 4 = 0.5417
    assert test["f1_macro"] == pytest.approx(sum(F1) / 4)  # (0.8 + 0.5 + 0.6667 + 0) / 4 = 0.4917
    rows = list(csv.reader((tmp_path / "per_class.csv").open()))
    assert rows[4] == ["test", "violin", "0.0000", "0.0000", "0.0000", "0"]
    assert rows[5] == ["test", "average (macro)", "0.5000", "0.5417", "0.4917", "6"]


def test_csv_and_png_reports(tmp_path):
    summary = _summary()
    report.write_reports(tmp_path, {"val": summary, "test": summary}, CLASSES)
    rows = list(csv.reader((tmp_path / "per_class.csv").open()))
    assert rows[0] == ["split", "class", "precision", "recall", "f1", "support"]
    assert rows[1] == ["val", "drums", "1.0000", "0.6667", "0.8000", "3"]
    assert rows[4] == ["val", "average (macro)", "0.6667", "0.7222", "0.6556", "6"]
    assert len(rows) == 1 + 2 * (len(CLASSES) + 1)
    matrix_rows = list(csv.reader((tmp_path / "confusion_matrix.csv").open()))
    assert matrix_rows[0] == ["split", "true \\ predicted", *CLASSES]
    assert [list(map(int, row[2:])) for row in matrix_rows[1:4]] == MATRIX
    assert matrix_rows[5][:2] == ["test", "flute"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_console_table_lists_every_class():
    text = report.format_summary("test", _summary())
    assert "top-1 error 33.33%" in text
    for name in CLASSES:
        assert name in text


@pytest.mark.parametrize("n_classes", [12, 20])
def test_confusion_matrix_is_readable_at_tensorboards_default_image_size(n_classes):
    """Fitted to a TensorBoard card (about 500 px wide), every count is at least 7 px tall and fits its
    cell, and the class names neither shrink below that nor overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from amir_pl.training.report import CARD_PIXELS, plot_confusion_matrices

    names = [f"instrument_{k:02d}" for k in range(n_classes)]
    matrix = torch.randint(0, 1000, (n_classes, n_classes), generator=torch.Generator().manual_seed(0))
    matrix[0, 0] = 999
    figure = plot_confusion_matrices({"test": matrix.tolist()}, names)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    scale = CARD_PIXELS / (figure.get_figwidth() * figure.dpi)  # the image as TensorBoard fits it
    axis = figure.axes[0]
    cell = axis.get_window_extent(renderer).width / n_classes
    counts = list(axis.texts)
    assert len(counts) == n_classes**2
    for text in counts:
        box = text.get_window_extent(renderer)
        assert box.height * scale >= 7 and box.width < cell
    x_boxes = [tick.get_window_extent(renderer) for tick in axis.get_xticklabels()]
    y_boxes = sorted((tick.get_window_extent(renderer) for tick in axis.get_yticklabels()), key=lambda box: box.y0)
    assert all(box.height * scale >= 7 for box in y_boxes) and all(box.width * scale >= 7 for box in x_boxes)
    assert all(below.y1 <= above.y0 + 0.5 for below, above in zip(y_boxes, y_boxes[1:]))  # names do not overlap
