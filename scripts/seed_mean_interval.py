"""How precisely a list of labelled recordings measures the mean LRAP of several models (seeds) scored on
it: the files resampled with replacement, the same draw for every model, and the models' mean recomputed
each time from their `amir-evaluate-recordings` reports (`per_file.csv`). One model: `bootstrap=N` there.

    python scripts/seed_mean_interval.py outputs/gu36_s{12345,1,2,3}_tta_mixtures/<run>/ [--split test]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from torchmetrics.functional.classification import multilabel_ranking_average_precision

FIRST_CLASS_COLUMN = 4  # split, file, labels, predicted, then one score column per class


def read_scores(report: Path, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    with (report / "per_file.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == split]
    classes = list(rows[0])[FIRST_CLASS_COLUMN:]
    scores = torch.tensor([[float(row[name]) for name in classes] for row in rows])
    target = torch.tensor([[int(name in row["labels"].split(";")) for name in classes] for row in rows])
    return [row["file"] for row in rows], scores, target


def mean_lrap(models: list[tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor | None = None) -> float:
    """The models' mean LRAP on the files ``index`` picks (all of them: None)."""
    values = []
    for scores, target in models:
        if index is not None:
            scores, target = scores[index], target[index]
        values.append(float(multilabel_ranking_average_precision(scores, target, num_labels=target.shape[1])))
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="amir-evaluate-recordings run folders")
    parser.add_argument("--split", default="test")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    read = [read_scores(report, args.split) for report in args.reports]
    if any(files != read[0][0] for files, _, _ in read):
        raise SystemExit("the reports scored different files: compare models on the same list")
    models = [(scores, target) for _, scores, target in read]
    n = len(read[0][0])
    generator = torch.Generator().manual_seed(args.seed)
    draws = torch.tensor(
        [mean_lrap(models, torch.randint(n, (n,), generator=generator)) for _ in range(args.resamples)]
    )
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975])).tolist()
    print(
        f"{len(models)} models, {n} files: mean LRAP {mean_lrap(models):.4f}; 95 % of {args.resamples} resamples "
        f"{low:.3f}-{high:.3f} (std {float(draws.std()):.3f}), {100 * float((draws >= 0.80).float().mean()):.0f} % at 0.80 or above"
    )


if __name__ == "__main__":
    main()
