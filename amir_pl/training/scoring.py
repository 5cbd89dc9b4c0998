"""Scoring splits with a trained module: after training (amir-train) and of any checkpoint on any
dataset file (amir-evaluate).

Writes metrics.json, per_class.csv and confusion_matrix.{csv,png} into its own run directory.
Runs at the precision the checkpoint was trained with unless trainer.precision says otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from amir_pl.core.errors import AmirError
from amir_pl.dataset.schema import DatasetInfo
from amir_pl.training import report
from amir_pl.training.data import H5DataModule
from amir_pl.training.module import AmirModule, load_checkpoint
from amir_pl.training.precision import scoring_precision

log = logging.getLogger(__name__)


def check_compatible(module: AmirModule, info: DatasetInfo, ckpt_path) -> None:
    """Refuse a dataset whose classes or features differ from those the checkpoint was trained on."""
    trained = module.hparams
    problems = []
    if list(trained["class_names"]) != list(info.class_names):
        problems.append(f"classes {list(trained['class_names'])} (file: {list(info.class_names)})")
    for name, value in info.features.as_dict().items():
        if trained["features"].get(name) != value:
            problems.append(f"{name}={trained['features'].get(name)!r} (file: {value!r})")
    if problems:
        raise AmirError(
            f"ckpt_path={ckpt_path} does not match data.path={info.path}: the model was trained with "
            + "; ".join(problems)
            + ". Prepare the data with the model's settings or use a checkpoint trained on such data"
        )


def score_splits(
    trainer: L.Trainer,
    module: AmirModule,
    datamodule: H5DataModule,
    splits,
    ckpt_path: str | None = None,
) -> dict[str, dict]:
    """Run the test loop on each split and return ``{split: metrics.json entry}``."""
    summaries = {}
    for split in splits:
        datamodule.test_split = split
        module.eval_split = split
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        summaries[split] = report.split_summary(module.results[split], module.class_names)
        summaries[split]["model_output"] = module.objective  # softmax | sigmoid: what the multilabel block scored
    return summaries


def finish(trainer: L.Trainer, summaries: dict, class_names, run_dir: Path) -> None:
    """On rank 0: write the report files and print the per-class tables."""
    if trainer.is_global_zero and summaries:
        report.publish(run_dir, summaries, class_names)


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    L.seed_everything(cfg.seed, workers=True)
    module = load_checkpoint(cfg.ckpt_path)
    datamodule: H5DataModule = instantiate(cfg.data)
    info = datamodule.info
    check_compatible(module, info, cfg.ckpt_path)
    splits = list(cfg.splits) if cfg.get("splits") else list(info.splits)
    missing = [split for split in splits if split not in info.splits]
    if missing:
        raise AmirError(f"splits={splits}: {info.path} has no {missing}; it has {list(info.splits)}")
    # null: the checkpoint's own precision (a bf16-mixed run's figures are reproduced); older ones: 32-true
    precision, source = scoring_precision(
        cfg.trainer.get("precision"), module.trained_precision, cfg.trainer.get("accelerator")
    )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, precision=precision)
    if str(trainer.precision) != str(precision):  # e.g. Lightning runs 16-mixed as bf16-mixed on a CPU
        log.warning("precision %s (%s) runs as %s on this accelerator", precision, source, trainer.precision)
    else:
        log.info("precision %s (%s)", precision, source)
    summaries = score_splits(trainer, module, datamodule, splits)
    finish(trainer, summaries, info.class_names, Path(cfg.paths.output_dir))
    return summaries
