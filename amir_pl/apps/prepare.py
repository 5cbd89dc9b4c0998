"""amir-prepare: a folder of recordings (or a manifest) -> one amir-pl/1 dataset file.

amir-prepare source=IRMAS-TrainingData output=data/irmas.h5
amir-prepare source=manifest.csv output=data/set.h5 features.scale=db balance=true num_workers=8
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.dataset.prepare import prepare


@hydra_app("amir-prepare", "prepare")
def main(cfg: DictConfig) -> None:
    report = prepare(cfg)
    counts, splits = report["class_counts"], list(report["class_counts"])
    print(f"{'class':<18}" + "".join(f"{split:>8}" for split in splits))
    for name in next(iter(counts.values())):
        print(f"{name:<18}" + "".join(f"{counts[split][name]:>8}" for split in splits))
    print(f"{'total':<18}" + "".join(f"{report['clips'][split]:>8}" for split in splits))
    print(
        f"{report['files_used']} of {report['files_found']} files used, {report['silent_clips_dropped']} silent "
        f"clips dropped, {len(report['skipped'])} notes, {report['seconds']} s"
    )
    for item in report["skipped"]:
        print(f"  skipped/noted: {item['file']}: {item['reason']}")
    print(f"dataset: {report['output']}")
    print(f"report: {report['report_path']}")


if __name__ == "__main__":
    main()
