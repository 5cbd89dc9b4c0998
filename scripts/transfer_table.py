"""The leave-one-family-out table of `make transfer`: for each held-out family, the test top-1 error and
macro F of each recipe, and the mean over the families. A ConvNet recipe's cell is the mean over its
seeds with every seed's value; the MFCC + SVM baseline is deterministic and runs once. Reads the newest
run of outputs/lofo_<family>_<recipe><tag>_seed<seed>/ (outputs/lofo_<family>_baseline/ for the
baseline) and writes the table to stdout and outputs/lofo_table<tag>.md. A second table gives the
ConvNet recipes' best validation error (the checkpoint kept, from ModelCheckpoint's state in
checkpoints/last.ckpt): what a recipe is chosen on (docs/results.md, "Seeds, and how large a
difference must be"); the test table is read, never used to choose.

    python scripts/transfer_table.py tim fluid tonejs lmms --seeds 12345 1 [--tag _fp32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

RECIPES = {
    "transfer": "ConvNet, `experiment=transfer`",
    "paper": "ConvNet, thesis net and input (`experiment=quickstart`)",
    "baseline": "MFCC + SVM baseline",
}


def newest_finished_run(root: Path, task: str) -> Path | None:
    """The newest run folder of ``task`` that has its metrics.json (a run still training has none)."""
    runs = sorted((root / task).glob("*/metrics.json"))
    return runs[-1].parent if runs else None


def newest_test_metrics(root: Path, task: str) -> dict | None:
    run = newest_finished_run(root, task)
    return json.loads((run / "metrics.json").read_text()).get("test") if run else None


def newest_best_validation_error(root: Path, task: str) -> float | None:
    """The best val/top1_error of the newest finished run of ``task``, the one the test table reads (None if
    it has no last.ckpt or no such monitor)."""
    run = newest_finished_run(root, task)
    last = run / "checkpoints" / "last.ckpt" if run else None
    if last is None or not last.exists():
        return None
    import torch  # only here: the test table needs no torch

    # mmap: only the callbacks' state is read from disk, not the weights
    state = torch.load(last, map_location="cpu", weights_only=False, mmap=True).get("callbacks", {})
    for name, callback in state.items():
        if name.startswith("ModelCheckpoint") and callback.get("monitor") == "val/top1_error":
            score = callback.get("best_model_score")
            return None if score is None else float(score)
    return None


def runs_of(root: Path, family: str, recipe: str, seeds: list[str], tag: str) -> list[dict]:
    """The test metrics of every seed's newest run (one for the baseline); seeds not run are left out."""
    if recipe == "baseline":
        tasks = [f"lofo_{family}_baseline"]
    else:
        tasks = [f"lofo_{family}_{recipe}{tag}_seed{seed}" for seed in seeds]
    return [metrics for task in tasks if (metrics := newest_test_metrics(root, task)) is not None]


def cell(runs: list[dict], expected: int) -> str:
    errors = [100 * run["top1_error"] for run in runs]
    text = f"{mean(errors):.1f} %, F {mean(run['f1_macro'] for run in runs):.3f}"
    if len(runs) > 1:
        text += " (" + ", ".join(f"{e:.1f}" for e in errors) + ")"
    if len(runs) < expected:
        text += f" ({len(runs)} of {expected} seeds)"
    return f"{text} (n={runs[0]['n']})"


def table(families: list[str], seeds: list[str], tag: str = "", root: Path = Path("outputs")) -> str:
    lines = [
        "| held-out family | " + " | ".join(RECIPES.values()) + " |",
        "| --- |" + " --- |" * len(RECIPES),
    ]
    fold_means: dict[str, list[tuple[float, float]]] = {recipe: [] for recipe in RECIPES}
    for family in families:
        cells = []
        for recipe in RECIPES:
            runs = runs_of(root, family, recipe, seeds, tag)
            if not runs:
                cells.append("not run")
                continue
            expected = 1 if recipe == "baseline" else len(seeds)
            fold_means[recipe].append((mean(r["top1_error"] for r in runs), mean(r["f1_macro"] for r in runs)))
            cells.append(cell(runs, expected))
        lines.append(f"| `{family}` | " + " | ".join(cells) + " |")
    means = []
    for recipe in RECIPES:
        values = fold_means[recipe]
        if len(values) == len(families):
            means.append(f"{100 * mean(e for e, _ in values):.1f} %, F {mean(f for _, f in values):.3f}")
        else:
            means.append(f"{len(values)} of {len(families)} folds run")
    lines.append("| mean | " + " | ".join(means) + " |")
    seeds_note = f"ConvNet cells: mean over seeds {', '.join(seeds)} (each seed's top-1 error in brackets)"
    return "\n".join(lines) + f"\n\n{seeds_note}\n"


def validation_table(families: list[str], seeds: list[str], tag: str = "", root: Path = Path("outputs")) -> str:
    """Best validation top-1 error per fold and ConvNet recipe: the mean over seeds, each seed's value."""
    recipes = [recipe for recipe in RECIPES if recipe != "baseline"]
    lines = [
        "| best validation error | " + " | ".join(f"`{family}`" for family in families) + " | mean |",
        "| --- |" + " --- |" * (len(families) + 1),
    ]
    for recipe in recipes:
        cells, fold_means = [], []
        for family in families:
            tasks = [f"lofo_{family}_{recipe}{tag}_seed{seed}" for seed in seeds]
            errors = [100 * e for task in tasks if (e := newest_best_validation_error(root, task)) is not None]
            if not errors:
                cells.append("not run")
                continue
            fold_means.append(mean(errors))
            text = f"{mean(errors):.1f} %" + (
                " (" + ", ".join(f"{e:.1f}" for e in errors) + ")" if len(errors) > 1 else ""
            )
            cells.append(text + (f" ({len(errors)} of {len(seeds)} seeds)" if len(errors) < len(seeds) else ""))
        total = (
            f"{mean(fold_means):.1f} %"
            if len(fold_means) == len(families)
            else f"{len(fold_means)} of {len(families)} folds run"
        )
        lines.append(f"| {RECIPES[recipe]} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", default=["tim", "fluid", "tonejs", "lmms"])
    parser.add_argument("--seeds", nargs="+", default=["12345", "1"])
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    text = table(args.families, args.seeds, args.tag) + "\n" + validation_table(args.families, args.seeds, args.tag)
    Path("outputs").mkdir(exist_ok=True)
    Path(f"outputs/lofo_table{args.tag}.md").write_text(text)
    print(text, end="")
