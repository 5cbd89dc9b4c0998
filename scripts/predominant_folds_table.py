"""The leave-one-family-out table of `make predominant-folds`: for each held-out family, what the
predominant recipe (with TRAIN_ARGS, named by LOFO_TAG) scores over its seeds. Validation first, the
columns a change is chosen on (docs/results.md, "Seeds, and how large a difference must be"): the
chosen checkpoint's top-1 error on the validation family's clips and the validation family's
mixtures (micro F1 at the threshold chosen there, LRAP); then the test family, read, never used to
choose: its mixtures scored with that threshold, and its solo clips. Each cell is the mean over the
seeds with every seed's value. Reads the newest finished run of outputs/pfold_<family><tag>_seed<seed>/
and of outputs/pfold_<family><tag>_seed<seed>_mixtures/; writes the table to stdout and
outputs/pfold_table<tag>.md.

    python scripts/predominant_folds_table.py tim fluid tonejs lmms --seeds 12345 1 [--tag _36ep]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from statistics import mean

COLUMNS = (
    "validation clips: top-1 error",
    "validation mixtures: micro F1",
    "validation mixtures: LRAP",
    "test mixtures: micro F1",
    "test mixtures: LRAP",
    "test solo clips: top-1 error",
)
PERCENT = {0, 5}  # columns shown in per cent


def newest_finished_run(root: Path, task: str) -> Path | None:
    """The newest run folder of ``task`` that has its metrics.json (a run still going has none)."""
    runs = sorted((root / task).glob("*/metrics.json"))
    return runs[-1].parent if runs else None


def chosen_validation_error(run: Path) -> float | None:
    """The validation top-1 error in the name of the checkpoint the recipe kept (``...-val_err0.4303.ckpt``)."""
    for checkpoint in sorted((run / "checkpoints").glob("epoch*.ckpt")):
        if found := re.search(r"val_err(\d+\.\d+)", checkpoint.name):
            return float(found.group(1))
    return None


def seed_figures(root: Path, task: str) -> list[float] | None:
    """The six figures of one seed, in COLUMNS' order, or None when its training or scoring is missing."""
    run, scored = newest_finished_run(root, task), newest_finished_run(root, f"{task}_mixtures")
    if run is None or scored is None:
        return None
    solo = json.loads((run / "metrics.json").read_text())["test"]
    mixtures = json.loads((scored / "metrics.json").read_text())
    val, test = mixtures.get("val"), mixtures["test"]
    error = chosen_validation_error(run)
    if val is None or error is None:
        return None
    return [error, val["micro"]["f1"], val["lrap"], test["micro"]["f1"], test["lrap"], solo["top1_error"]]


def _number(value: float, column: int) -> str:
    return f"{100 * value:.1f}" if column in PERCENT else f"{value:.3f}"


def _cell(values: list[float], column: int, expected: int) -> str:
    text = _number(mean(values), column) + (" %" if column in PERCENT else "")
    if len(values) > 1:
        text += " (" + ", ".join(_number(v, column) for v in values) + ")"
    if len(values) < expected:
        text += f" ({len(values)} of {expected} seeds)"
    return text


def table(families: list[str], seeds: list[str], tag: str = "", root: Path = Path("outputs")) -> str:
    lines = ["| held-out family | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    fold_means: list[list[float]] = []
    for family in families:
        runs = [f for seed in seeds if (f := seed_figures(root, f"pfold_{family}{tag}_seed{seed}")) is not None]
        if not runs:
            lines.append(f"| `{family}` |" + " not run |" * len(COLUMNS))
            continue
        columns = list(zip(*runs))
        fold_means.append([mean(values) for values in columns])
        lines.append(
            f"| `{family}` | " + " | ".join(_cell(list(v), i, len(seeds)) for i, v in enumerate(columns)) + " |"
        )
    if len(fold_means) == len(families):
        means = [_cell([mean(m[i] for m in fold_means)], i, 1) for i in range(len(COLUMNS))]
        lines.append("| mean over the folds | " + " | ".join(means) + " |")
    else:
        lines.append(
            f"| mean over the folds | {len(fold_means)} of {len(families)} folds run |" + " |" * (len(COLUMNS) - 1)
        )
    note = f"Each cell: the mean over seeds {', '.join(seeds)} (each seed's value in brackets)."
    return "\n".join(lines) + f"\n\n{note}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="+", help="the held-out (test) family of each fold")
    parser.add_argument("--seeds", nargs="+", default=["12345", "1"])
    parser.add_argument("--tag", default="", help="LOFO_TAG of the runs (a variant's name)")
    parser.add_argument("--root", type=Path, default=Path("outputs"))
    args = parser.parse_args()
    text = table(args.families, args.seeds, args.tag, args.root)
    print(text)
    (args.root / f"pfold_table{args.tag}.md").write_text(text)


if __name__ == "__main__":
    main()
