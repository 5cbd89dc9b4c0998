"""The leave-one-family-out table of `make transfer`: for each held-out family, the test top-1 error
and macro F of each recipe, and the mean over the families. Reads the newest run of
outputs/lofo_<family>_<recipe>/ and writes the table to stdout and outputs/lofo_table.md.

    python scripts/transfer_table.py tim fluid tonejs lmms
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECIPES = {
    "transfer": "ConvNet, `experiment=transfer`",
    "paper": "ConvNet, thesis net and input (`experiment=quickstart`)",
    "baseline": "MFCC + SVM baseline",
}


def newest_test_metrics(root: Path, task: str) -> dict | None:
    runs = sorted((root / task).glob("*/metrics.json"))
    return json.loads(runs[-1].read_text()).get("test") if runs else None


def table(families: list[str], root: Path = Path("outputs")) -> str:
    lines = [
        "| held-out family | " + " | ".join(RECIPES.values()) + " |",
        "| --- |" + " --- |" * len(RECIPES),
    ]
    totals = {recipe: [] for recipe in RECIPES}
    for family in families:
        cells = []
        for recipe in RECIPES:
            metrics = newest_test_metrics(root, f"lofo_{family}_{recipe}")
            if metrics is None:
                cells.append("not run")
                continue
            totals[recipe].append((metrics["top1_error"], metrics["f1_macro"]))
            cells.append(f"{100 * metrics['top1_error']:.1f} %, F {metrics['f1_macro']:.3f} (n={metrics['n']})")
        lines.append(f"| `{family}` | " + " | ".join(cells) + " |")
    means = []
    for recipe in RECIPES:
        values = totals[recipe]
        if len(values) == len(families):
            means.append(
                f"{100 * sum(e for e, _ in values) / len(values):.1f} %, F {sum(f for _, f in values) / len(values):.3f}"
            )
        else:
            means.append(f"{len(values)} of {len(families)} folds run")
    lines.append("| mean | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = table(sys.argv[1:] or ["tim", "fluid", "tonejs", "lmms"])
    Path("outputs").mkdir(exist_ok=True)
    Path("outputs/lofo_table.md").write_text(text)
    print(text, end="")
