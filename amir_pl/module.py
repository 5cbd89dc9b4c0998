"""The LightningModule: loss, optimiser and torchmetrics around the plain ConvNet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from amir_pl import report
from amir_pl.cli import AmirError


def classification_metrics(num_classes: int) -> MetricCollection:
    """Top-1 accuracy, macro and per-class P/R/F1, and the confusion matrix (rows true, columns predicted)."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "precision_macro": MulticlassPrecision(num_classes, average="macro"),
            "recall_macro": MulticlassRecall(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average="none"),
            "recall": MulticlassRecall(num_classes, average="none"),
            "f1": MulticlassF1Score(num_classes, average="none"),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        }
    )


def _plain(config):
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class AmirModule(L.LightningModule):
    """Trains and evaluates a classifier on mel clips.

    ``net`` and ``optimizer`` are Hydra configs (``_target_`` mappings), kept in
    the checkpoint's hyperparameters so that ``AmirModule.load_from_checkpoint``
    rebuilds the net alone. ``class_names`` and ``features`` (the dataset file's
    attributes) travel with it, so evaluation and prediction can check that a
    dataset or an audio front end matches the model.
    """

    def __init__(
        self,
        net: Mapping,
        optimizer: Mapping,
        class_names: Sequence[str],
        features: Mapping,
        input_shape: Sequence[int],
        loss_reduction: str = "mean",
        scheduler: Mapping | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
    ):
        super().__init__()
        if loss_reduction not in ("mean", "sum"):
            raise AmirError(f"module.loss_reduction={loss_reduction!r} must be 'mean' or 'sum'")
        net, optimizer, features, scheduler = map(_plain, (net, optimizer, features, scheduler))
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "class_names": list(class_names),
                "features": dict(features),
                "input_shape": list(input_shape),
                "loss_reduction": loss_reduction,
            }
        )
        # Speed options, not part of the model: left out of the hyperparameters, so a checkpoint
        # loads the same whatever they were during training.
        self.channels_last = channels_last
        self.compile_mode = compile
        self.class_names = list(class_names)
        self.net = instantiate(net, input_shape=tuple(input_shape), num_classes=len(class_names))
        num_classes = len(class_names)
        # Training-step metrics must not wait for the GPU: the default NaN check and argument
        # validation each read a value back to the host, stalling every step (seen on an H200).
        # A NaN loss still shows: it propagates into train/loss.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_loss = MeanMetric()
        self.val_metrics = classification_metrics(num_classes)
        self.test_loss = MeanMetric()
        self.test_metrics = classification_metrics(num_classes)
        self.results: dict[str, dict] = {}  # stage -> computed metrics of the last epoch, on CPU
        self.eval_split = "test"  # which split the test loop is scoring (named in logs and results)

    def configure_model(self) -> None:
        """``channels_last`` (NHWC convolutions: faster with cuDNN and on CPUs) and ``compile``
        (torch.compile of the net, in place: the state_dict keys do not change)."""
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile_mode and not getattr(self, "_compiled", False):
            mode = None if self.compile_mode is True else str(self.compile_mode)
            self.net.compile(mode=mode)
            self._compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())

    def _step(self, batch):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)
        return logits, y, loss

    def training_step(self, batch, batch_idx):
        logits, y, loss = self._step(batch)
        mean_loss = loss.detach() / (len(y) if self.hparams.loss_reduction == "sum" else 1)
        # One value per clip (weights are ignored with nan_strategy="disable"): the epoch mean is per clip.
        self.train_loss.update(mean_loss.expand(len(y)))
        self.train_accuracy.update(logits.detach(), y)
        # Not on the progress bar: Lightning turns progress-bar values into Python numbers after every
        # step, bar shown or not, and on a GPU each such read waits for the step to finish.
        self.log("train/loss_step", loss.detach(), batch_size=len(y))
        return loss

    def on_train_epoch_end(self):
        self.log("train/loss", self.train_loss.compute(), sync_dist=True)
        self.log("train/top1_error", 1 - self.train_accuracy.compute(), sync_dist=True)
        self.train_loss.reset()
        self.train_accuracy.reset()

    def _eval_step(self, batch, loss_metric, metrics):
        logits, y, loss = self._step(batch)
        mean_loss = loss / len(y) if self.hparams.loss_reduction == "sum" else loss
        loss_metric.update(mean_loss, len(y))
        metrics.update(logits, y)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_loss, self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_loss, self.test_metrics)

    def _end_eval_epoch(self, prefix: str, stage: str, loss_metric, metrics):
        # compute() syncs the metric states across ranks: every clip counted once.
        values = {name: value.cpu() for name, value in metrics.compute().items()}
        values["loss"] = loss_metric.compute().cpu()
        loss_metric.reset()
        metrics.reset()
        if self.trainer.sanity_checking:
            return
        self.results[stage] = values
        scalars = {
            f"{prefix}/loss": values["loss"],
            f"{prefix}/top1_error": 1 - values["accuracy"],
            f"{prefix}/f1_macro": values["f1_macro"],
        }
        # Identical on every rank already; sync_dist keeps Lightning's epoch-level bookkeeping consistent.
        self.log_dict(scalars, prog_bar=True, sync_dist=True)
        if self.trainer.is_global_zero:
            report.log_to_tensorboard(self.loggers, prefix, values, self.class_names, self.global_step)

    def on_validation_epoch_end(self):
        self._end_eval_epoch("val", "val", self.val_loss, self.val_metrics)

    def on_test_epoch_end(self):
        prefix = "test" if self.eval_split == "test" else f"eval_{self.eval_split}"
        self._end_eval_epoch(prefix, self.eval_split, self.test_loss, self.test_metrics)

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
