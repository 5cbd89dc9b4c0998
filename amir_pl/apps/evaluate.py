"""amir-evaluate: score a checkpoint on the splits of any dataset file.

    amir-evaluate ckpt_path=outputs/train/<run>/checkpoints/last.ckpt data.path=data/set.h5 [splits=[test]]

Writes metrics.json, per_class.csv and confusion_matrix.{csv,png} into its own run directory.
Runs at the precision the checkpoint was trained with unless trainer.precision says otherwise.
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.training.scoring import evaluate


@hydra_app("amir-evaluate", "evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
