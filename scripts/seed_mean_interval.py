"""How precisely a list of labelled recordings measures the mean LRAP of several models (seeds) scored on
it: the files resampled with replacement, the same draw for every model, and the models' mean recomputed
each time from their `amir-evaluate-recordings` reports (`per_file.csv`, whose scores are rounded to 4
decimals). One model: `bootstrap=N` there. With `--against`, the difference from other models' mean
on the same draws (paired: the files both groups find hard cancel).

    python scripts/seed_mean_interval.py outputs/gu36_s{12345,1,2,3}_tta_mixtures/<run>/ [--split test]
    python scripts/seed_mean_interval.py <new recipe's reports> --against <old recipe's reports>
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from torchmetrics.functional.classification import multilabel_ranking_average_precision


def read_scores(report: Path, split: str) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    """The files, classes, scores and 0/1 targets of one split of a report's per_file.csv."""
    with (report / "per_file.csv").open() as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = [row for row in reader if row["split"] == split]
    if not rows:
        raise SystemExit(f"{report / 'per_file.csv'}: no files of split {split!r} (--split)")
    classes = columns[columns.index("predicted") + 1 :]  # one score column per class after the predicted ones
    scores = torch.tensor([[float(row[name]) for name in classes] for row in rows])
    target = torch.tensor([[int(name in row["labels"].split(";")) for name in classes] for row in rows])
    return [row["file"] for row in rows], classes, scores, target


def mean_lrap(models: list[tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor | None = None) -> float:
    """The models' mean LRAP on the files ``index`` picks (all of them: None)."""
    values = []
    for scores, target in models:
        if index is not None:
            scores, target = scores[index], target[index]
        values.append(float(multilabel_ranking_average_precision(scores, target, num_labels=target.shape[1])))
    return sum(values) / len(values)


def interval(draws: torch.Tensor) -> str:
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975])).tolist()
    return f"95 % of {len(draws)} resamples {low:.3f} to {high:.3f} (std {float(draws.std()):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="amir-evaluate-recordings run folders")
    parser.add_argument("--against", nargs="+", type=Path, default=[], help="other models' reports: the difference")
    parser.add_argument("--split", default="test")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.80, help="also say how many draws reach this LRAP")
    args = parser.parse_args()
    read = [read_scores(report, args.split) for report in [*args.reports, *args.against]]
    if any(files != read[0][0] or classes != read[0][1] for files, classes, _, _ in read):
        raise SystemExit("the reports scored different files or classes: compare models on the same list")
    models = [(scores, target) for _, _, scores, target in read[: len(args.reports)]]
    others = [(scores, target) for _, _, scores, target in read[len(args.reports) :]]
    n = len(read[0][0])
    generator = torch.Generator().manual_seed(args.seed)
    indices = [torch.randint(n, (n,), generator=generator) for _ in range(args.resamples)]
    draws = torch.tensor([mean_lrap(models, index) for index in indices])
    reached = 100 * float((draws >= args.target).float().mean())
    print(
        f"{len(models)} models, {n} files: mean LRAP {mean_lrap(models):.4f}; {interval(draws)}, "
        f"{reached:.0f} % at {args.target:.2f} or above"
    )
    if others:  # the same draws of files for both groups: a paired difference
        differences = draws - torch.tensor([mean_lrap(others, index) for index in indices])
        print(
            f"against {len(others)} models (mean LRAP {mean_lrap(others):.4f}): difference "
            f"{mean_lrap(models) - mean_lrap(others):+.4f}; {interval(differences)}, "
            f"{100 * float((differences > 0).float().mean()):.0f} % above 0"
        )


if __name__ == "__main__":
    main()
