"""Training (amir-train): fit the ConvNet on a dataset file, resuming where asked, then score the best
checkpoint on the test splits."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from amir_pl.core.errors import AmirError
from amir_pl.core.files import warn_if_short_of_space
from amir_pl.training.cluster import check_launch, cluster_plugins
from amir_pl.training.data import H5DataModule
from amir_pl.training.fault_tolerance import (
    CHECKPOINT_DIR,
    AtomicCheckpointIO,
    checkpoints_in,
    find_resume_checkpoint,
    record_slurm_job,
    requeued_slurm_run,
    run_dir_of,
)
from amir_pl.training.host_memory import keep_freed_memory
from amir_pl.training.module import AmirModule
from amir_pl.training.precision import log_precision, resolve_precision
from amir_pl.training.scoring import finish, score_splits

log = logging.getLogger(__name__)
INPUT_STATISTICS_CLIPS = 4096


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def _resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint ``cfg.resume`` asks for; its run folder becomes this run's output folder,
    so checkpoints, TensorBoard and reports continue where they were.

    A requeued job continues from its own folder by itself (unless ``resume`` names another):
    submitit's starts again in it; a plain SLURM job's is found by its job id.
    """
    overrides = [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []
    run_dir = Path(cfg.paths.output_dir)
    runs_root = Path(cfg.paths.root_dir) / cfg.task_name
    resume = cfg.get("resume")
    if not resume or str(resume).lower() == "true":
        if os.environ.get("SUBMITIT_EXECUTOR") and checkpoints_in(run_dir / CHECKPOINT_DIR):
            resume = str(run_dir)  # a job submitit requeued: it starts again in its own folder
        elif (own := requeued_slurm_run(runs_root, run_dir, overrides)) is not None:
            resume = str(own)  # a plain SLURM job that SLURM requeued: Hydra made it a new folder
    checkpoint = find_resume_checkpoint(resume, run_dir, runs_root, overrides)
    if checkpoint is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir_of(checkpoint))
        log.info("resuming from %s; outputs continue in %s", checkpoint, cfg.paths.output_dir)
    record_slurm_job(Path(cfg.paths.output_dir), overrides)
    return checkpoint


def _check_sam(cfg: DictConfig) -> None:
    """SAM steps the optimiser itself (Lightning's manual optimisation), where Lightning neither clips
    gradients nor accumulates them: refuse those beside it, naming the options."""
    if not (cfg.get("module") or {}).get("sam_rho"):
        return
    for option, value, off in (
        ("gradient_clip_val", cfg.trainer.get("gradient_clip_val") or None, None),
        ("accumulate_grad_batches", cfg.trainer.get("accumulate_grad_batches", 1), 1),
    ):
        if value != off:
            raise AmirError(
                f"module.sam_rho with trainer.{option}={value}: sharpness-aware minimisation steps the optimiser "
                f"itself, where Lightning does not apply {option}; set trainer.{option}={'null' if off is None else off} "
                "or module.sam_rho=0"
            )


def build_module(cfg: DictConfig, datamodule: H5DataModule) -> AmirModule:
    """The LightningModule amir-train fits for ``cfg`` on ``datamodule``'s file (amir-bench times the same)."""
    info = datamodule.info
    _check_sam(cfg)
    options = dict(cfg.get("module") or {})
    if options.get("teachers"):  # recorded as absolute paths: hydra.job.chdir is false, so relative is to here
        options["teachers"] = [str(Path(path).expanduser().resolve()) for path in options["teachers"]]
    module = AmirModule(
        net=cfg.model,
        optimizer=cfg.optimizer,
        class_names=info.class_names,
        # The silence gate travels with the features: amir-predict and amir-export use the same one.
        features={**info.features.as_dict(), "rms_threshold": info.rms_threshold},
        input_shape=info.input_shape,
        augment=cfg.get("augment") or None,
        scheduler=cfg.get("scheduler") or None,
        **options,
    )
    module.load_teachers()  # a wrong teacher fails here, before the Trainer starts a run
    # Input statistics of the training split (model.input_norm=band), the same on every rank; a resumed
    # run gets its own back from the checkpoint.
    if getattr(module.net, "needs_input_statistics", False):
        module.net.fit_input_statistics(datamodule.first_clips("train", INPUT_STATISTICS_CLIPS))
        log.info("per-band input statistics from the first %d training clips", INPUT_STATISTICS_CLIPS)
    return module


def _check_room_for_checkpoints(module: AmirModule, cfg: DictConfig) -> None:
    """Warn when the run folder's disk cannot hold the checkpoints the run keeps: each holds the weights
    and Adam's two moments (3 x float32 per parameter); the best and last.ckpt, and one being written."""
    checkpoint_bytes = 3 * 4 * sum(parameter.numel() for parameter in module.parameters())
    kept = 3 if cfg.get("callbacks", {}).get("model_checkpoint") else 2
    warn_if_short_of_space(
        cfg.paths.output_dir,
        kept * checkpoint_bytes,
        f"{kept} checkpoints of {checkpoint_bytes / 1e6:.0f} MB",
        "hydra.run.dir=<folder> or paths.root_dir=<folder>",
    )


def train(cfg: DictConfig) -> dict[str, dict]:
    """Fit, then score ``cfg.test_splits`` with the best checkpoint; returns the metrics.json entries."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    resume_from = _resume_checkpoint(cfg)
    datamodule: H5DataModule = instantiate(cfg.data)
    info = datamodule.info
    datamodule.require_split("train")
    module = build_module(cfg, datamodule)
    checkpoint_cfg = cfg.get("callbacks", {}).get("model_checkpoint")
    if not datamodule.has_split("val") and checkpoint_cfg is not None and checkpoint_cfg.get("monitor"):
        log.warning("%s has no 'val' split: no validation; keeping the last checkpoint only", info.path)
        with open_dict(cfg):
            checkpoint_cfg.monitor = None
            checkpoint_cfg.filename = "epoch{epoch:03d}"
    precision, why = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    log_precision(precision, why)
    with open_dict(cfg):
        cfg.trainer.precision = precision  # what the TensorBoard hyperparameters and the Trainer see
    _check_room_for_checkpoints(module, cfg)
    loggers = _instantiate_all(cfg.get("logger"))
    plugins = [AtomicCheckpointIO(), *cluster_plugins(cfg.trainer.devices, cfg.trainer.num_nodes)]
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it may not show
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    check_launch(trainer)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    with warnings.catch_warnings():
        # H5DataModule.state_dict restores the position inside the epoch: the warning does not apply.
        warnings.filterwarnings("ignore", message=".*ended before the epoch ended and your dataloader is not resumable")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best or ("last" if trainer.checkpoint_callback else None)
    splits = [split for split in cfg.get("test_splits") or [] if datamodule.has_split(split)]
    summaries = score_splits(trainer, module, datamodule, splits, ckpt_path=ckpt_path)
    run_dir = Path(cfg.paths.output_dir)
    finish(trainer, summaries, info.class_names, run_dir)
    if trainer.is_global_zero:
        print(f"best checkpoint: {best or 'none (no validation)'}")
        if any(hasattr(logger, "log_dir") for logger in loggers):
            print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    return summaries
