"""amir-evaluate-recordings: multi-label scores of labelled recordings (the IRMAS test protocol).

amir-evaluate-recordings ckpt_path=outputs/train/<run>/checkpoints/best.ckpt inputs=IRMAS-TestingData
amir-evaluate-recordings ckpt_path=... inputs=test.csv val_inputs=val.csv threshold=val tensorboard=true

Writes metrics.json, per_class.csv, per_file.csv, precision_recall.png and per_class_f1.png into
its run directory.
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.inference.recordings import evaluate_recordings


@hydra_app("amir-evaluate-recordings", "evaluate_recordings")
def main(cfg: DictConfig) -> None:
    evaluate_recordings(cfg)


if __name__ == "__main__":
    main()
