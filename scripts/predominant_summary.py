"""The two figures of `make predominant`: the held-out family's mixtures, scored the IRMAS way with the
threshold chosen on the validation family's mixtures, and its solo test clips, from one model.

    python scripts/predominant_summary.py outputs/predominant/<run>/ outputs/predominant_mixtures/<run>/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from amir_pl.inference.recordings import bootstrap_line


def summary(train_run: Path, mixtures_run: Path) -> str:
    solo = json.loads((train_run / "metrics.json").read_text())["test"]
    mixtures = json.loads((mixtures_run / "metrics.json").read_text())
    test, val = mixtures["test"], mixtures.get("val")
    warps = test.get("tta_semitones")
    lines = [
        f"mixtures of the test family ({test['n']} files, {test['aggregation']} of {test['model_output']} scores"
        + (f" over windows warped by {warps} semitones" if warps else "")
        + ", "
        f"threshold {test['threshold']:.2f} chosen on {val['n'] if val else 0} validation mixtures): "
        f"micro F1 {test['micro']['f1']:.3f}, macro F1 {test['macro']['f1']:.3f}, LRAP {test['lrap']:.3f}",
        f"solo clips of the test family ({solo['n']} clips): top-1 error {solo['top1_error']:.1%}, "
        f"macro F {solo['f1_macro']:.3f}",
    ]
    if val:
        lines.insert(1, f"  validation mixtures: micro F1 {val['micro']['f1']:.3f}, LRAP {val['lrap']:.3f}")
    if booted := test.get("bootstrap"):  # amir-evaluate-recordings bootstrap=N: right under the test figures
        lines.insert(1, bootstrap_line(booted, "the test mixtures"))
    lines.append(f"runs: {train_run} {mixtures_run}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "train_run", type=Path, help="the amir-train run folder (its metrics.json: the solo test clips)"
    )
    parser.add_argument("mixtures_run", type=Path, help="the amir-evaluate-recordings run folder")
    args = parser.parse_args()
    print(summary(args.train_run, args.mixtures_run))


if __name__ == "__main__":
    main()
