"""The LightningModule: loss, optimiser and torchmetrics around the plain ConvNet."""

from __future__ import annotations

import importlib
import inspect
import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelF1Score,
    MultilabelRankingAveragePrecision,
)

from amir_pl.core.errors import AmirError
from amir_pl.training import report

# Epoch values are logged without sync_dist: they come from torchmetrics, whose compute() has
# already synced them across ranks. Lightning's advice to add it (one more all-reduce) does not apply.
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(train|val|test|eval_[^/']*)/(loss|top1_error|f1_macro|multilabel_f1_micro|multilabel_f1_macro|lrap)'",
    category=PossibleUserWarning,
)
# With module.sam_rho (manual optimisation) ModelCheckpoint warns that a step-triggered checkpoint holds the
# weights after that step's update: that is the state a resumed run must continue from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


def classification_metrics(num_classes: int) -> MetricCollection:
    """Top-1 accuracy, per-class P/R/F1 and the confusion matrix (rows true, columns predicted).

    No macro metrics here: ``report.with_macro_averages`` takes the mean of the per-class vectors,
    since torchmetrics' ``average="macro"`` leaves out a class absent from targets and predictions.
    """
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "precision": MulticlassPrecision(num_classes, average="none"),
            "recall": MulticlassRecall(num_classes, average="none"),
            "f1": MulticlassF1Score(num_classes, average="none"),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        }
    )


def multilabel_metrics(num_classes: int, threshold: float = 0.5) -> MetricCollection:
    """Which instruments are predominant: micro and macro F1 at ``threshold`` and LRAP, on the
    model's scores (sigmoids, or a softmax model's probabilities) against each clip's labels (its
    class, and any other whose training target is 0.5 or more: ``AmirModule._targets``)."""
    return MetricCollection(
        {
            "multilabel_f1_micro": MultilabelF1Score(num_classes, threshold=threshold, average="micro"),
            "multilabel_f1_macro": MultilabelF1Score(num_classes, threshold=threshold, average="macro"),
            "lrap": MultilabelRankingAveragePrecision(num_classes),
        }
    )


OBJECTIVES = ("softmax", "sigmoid")


def class_scores(logits: torch.Tensor, objective: str) -> torch.Tensor:
    """What a model answers: softmax probabilities (``softmax``: one instrument, summing to 1) or a
    sigmoid per class (``sigmoid``: each instrument present or not, on its own)."""
    return torch.sigmoid(logits) if objective == "sigmoid" else torch.softmax(logits, dim=1)


def asymmetric_loss(logits: torch.Tensor, target: torch.Tensor, focus: float, margin: float) -> torch.Tensor:
    """Per class, the asymmetric loss of Ridnik et al. (ICCV 2021) with no focusing on present classes:
    binary cross-entropy where the target is 1, and where it is 0 the absent class's term weighted by
    ``p_m ** focus`` with ``p_m = max(p - margin, 0)``, so that the many easy absent classes of a clip count
    little and those below ``margin`` not at all. Soft targets weigh the two terms, and the score then
    settles above the target (0.3 -> about 0.6 at focus 4, margin 0.05). ``focus = margin = 0`` is binary
    cross-entropy."""
    present = target * F.logsigmoid(logits)
    shifted = (torch.sigmoid(logits) - margin).clamp_min(0)
    log_absent = torch.log1p(-shifted) if margin else F.logsigmoid(-logits)  # 1 - shifted >= margin > 0
    absent = (1 - target) * shifted.pow(focus) * log_absent
    return -(present + absent)


def pairwise_ranking_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per clip, the log-sum-exp pairwise ranking loss (LSEP; Li et al., CVPR 2017):
    ``log(1 + sum over present p and absent a of exp(logit_a - logit_p))``, present where the target is
    0.5 or more. It costs wherever an absent class comes near or above a present one, which is what label
    ranking average precision (LRAP) counts, and nothing for the ranks among present or among absent
    classes. A clip without a present or an absent class costs 0."""
    present = target >= 0.5
    pairs = present.unsqueeze(2) & ~present.unsqueeze(1)  # [clip, present p, absent a]
    margins = logits.unsqueeze(1) - logits.unsqueeze(2)  # [clip, p, a] = logit_a - logit_p
    masked = margins.masked_fill(~pairs, float("-inf")).flatten(1)
    # log(1 + sum exp) as the log-sum-exp with a 0 beside the pairs: finite, gradient too, where a clip has none
    return torch.logsumexp(torch.cat([masked.new_zeros(len(masked), 1), masked], dim=1), dim=1)


def supervised_contrastive_loss(embedding: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The supervised contrastive loss (Khosla et al., NeurIPS 2020, its "out" form) of a batch: per clip,
    minus the mean over the other clips of its class of ``log softmax(cos(z_i, z_j) / temperature)`` over
    all other clips, averaged over the clips that have another of their class (0 where none has). Clips of
    one instrument from different recordings are drawn together, whatever their family. In float32 under
    autocast too, and without a boolean index (which would wait for the GPU every step)."""
    with torch.autocast(embedding.device.type, enabled=False):
        z = F.normalize(embedding.float(), dim=1)
        similarity = (z @ z.T) / temperature
        self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
        others = similarity.masked_fill(self_pairs, float("-inf"))
        log_prob = similarity - torch.logsumexp(others, dim=1, keepdim=True)
        positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_pairs
        count = positives.sum(dim=1)
        per_clip = -(log_prob * positives).sum(dim=1) / count.clamp_min(1)
        anchors = count > 0  # torch.where, not a product: a lone clip's per_clip is NaN (inf x 0)
        return torch.where(anchors, per_clip, 0.0).sum() / anchors.sum().clamp_min(1)


MULTILABEL_LOGGED = ("multilabel_f1_micro", "multilabel_f1_macro", "lrap")  # val/<name>: a checkpoint monitor


def _plain(config):
    return OmegaConf.to_container(config, resolve=True, enum_to_str=True) if isinstance(config, DictConfig) else config


# What a checkpoint's hyperparameters may build: hyperparameter -> (module, base class). A target
# must be a class defined directly in that module; anything else would run code the file names.
CHECKPOINT_TARGETS = {
    "net": ("amir_pl.training.model", nn.Module),
    "augment": ("amir_pl.training.augment", nn.Module),
    "optimizer": ("torch.optim", torch.optim.Optimizer),
    "scheduler": ("torch.optim.lr_scheduler", torch.optim.lr_scheduler.LRScheduler),
}


# Checkpoints written before the package had stage folders name the net as amir_pl.model.<Class>.
MOVED_TARGETS = {"amir_pl.model.": "amir_pl.training.model."}


def _current_target(target):
    for old, new in MOVED_TARGETS.items():
        if isinstance(target, str) and target.startswith(old):
            return new + target.removeprefix(old)
    return target


def _allowed_target(key: str, target) -> bool:
    target = _current_target(target)
    if key not in CHECKPOINT_TARGETS or not isinstance(target, str):
        return False
    module_name, base = CHECKPOINT_TARGETS[key]
    name = target.removeprefix(module_name + ".")
    if name == target or not re.fullmatch(r"[A-Za-z_]\w*", name):
        return False  # checked as text first: importing a module the file names would run its code
    found = getattr(importlib.import_module(module_name), name, None)
    return isinstance(found, type) and issubclass(found, base)


def foreign_targets(hparams: Mapping) -> list[str]:
    """``key._target_=value`` for every target in checkpoint hyperparameters that is not on
    ``CHECKPOINT_TARGETS`` (nested ones included: Hydra would instantiate them too)."""
    found = []

    def walk(node, path: str) -> None:
        if isinstance(node, Mapping):
            if "_target_" in node and not _allowed_target(path, node["_target_"]):
                found.append(f"{path or '<root>'}._target_={node['_target_']}")
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(hparams, "")
    return found


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
        augment: Mapping | None = None,
        label_smoothing: float = 0.0,
        objective: str = "softmax",
        accompaniment_target: float = 0.0,
        negative_focus: float = 0.0,
        negative_margin: float = 0.0,
        ranking_weight: float = 0.0,
        teachers: Sequence[str] = (),
        teacher_weight: float = 0.9,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.1,
        sam_rho: float = 0.0,
    ):
        super().__init__()
        teachers = [str(path) for path in teachers or ()]
        if teachers and not 0.0 < teacher_weight <= 1.0:
            raise AmirError(
                f"module.teacher_weight={teacher_weight}: the share of the loss that fits the teachers' scores; "
                "give a weight in (0, 1] (0.9 is usual), or module.teachers=[] to train on the labels alone"
            )
        if objective not in OBJECTIVES:
            raise AmirError(
                f"module.objective={objective!r}: softmax (one instrument: cross-entropy) or sigmoid "
                "(the predominant instruments: binary cross-entropy per class)"
            )
        if objective == "sigmoid" and label_smoothing:
            raise AmirError(
                "module.label_smoothing smooths a softmax target; with module.objective=sigmoid set it to 0"
            )
        if (negative_focus or negative_margin) and (
            objective != "sigmoid" or not 0.0 <= negative_focus < math.inf or not 0.0 <= negative_margin < 1.0
        ):
            raise AmirError(
                f"module.negative_focus={negative_focus}, negative_margin={negative_margin}: the asymmetric loss "
                "weighs the absent classes of a sigmoid model; give module.objective=sigmoid, a focus >= 0 (4 is "
                "usual) and a margin in [0, 1) (0.05 is usual), or both 0 (binary cross-entropy)"
            )
        if ranking_weight and (objective != "sigmoid" or not 0.0 <= ranking_weight < math.inf):
            raise AmirError(
                f"module.ranking_weight={ranking_weight}: the pairwise ranking term is added to a sigmoid model's "
                "loss; give module.objective=sigmoid and a finite weight >= 0 (0: off)"
            )
        if contrastive_weight and not (
            0.0 < contrastive_weight < math.inf and 0.0 < contrastive_temperature < math.inf
        ):
            raise AmirError(
                f"module.contrastive_weight={contrastive_weight}, contrastive_temperature={contrastive_temperature}: "
                "give a finite weight >= 0 (0: off) and a temperature > 0 (0.1 is usual)"
            )
        if not 0.0 <= sam_rho < math.inf:
            raise AmirError(
                f"module.sam_rho={sam_rho}: the radius of sharpness-aware minimisation; give a finite value >= 0 "
                "(0: off; 0.05 is usual)"
            )
        if not 0.0 <= accompaniment_target <= 1.0:
            raise AmirError(f"module.accompaniment_target={accompaniment_target!r}: give a target in [0, 1]")
        if loss_reduction not in ("mean", "sum"):
            raise AmirError(f"module.loss_reduction={loss_reduction!r} must be 'mean' or 'sum'")
        if not 0.0 <= label_smoothing < 1.0:
            raise AmirError(f"module.label_smoothing={label_smoothing!r} must be in [0, 1): 0 is off, 0.1 is usual")
        net, optimizer, features, scheduler, augment = map(_plain, (net, optimizer, features, scheduler, augment))
        if net.get("compression") == "db" and features.get("scale") == "db":
            raise AmirError(
                "model.compression=db on a dataset already in decibels (features.scale=db): "
                "use model.compression=none, or a dataset prepared with features.scale=power"
            )
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "class_names": list(class_names),
                "features": dict(features),
                "input_shape": list(input_shape),
                "loss_reduction": loss_reduction,
                "augment": augment,
                "label_smoothing": label_smoothing,
                "objective": objective,
                "accompaniment_target": accompaniment_target,
                "negative_focus": negative_focus,
                "negative_margin": negative_margin,
                "ranking_weight": ranking_weight,
                "teachers": teachers,
                "teacher_weight": teacher_weight,
                "contrastive_weight": contrastive_weight,
                "contrastive_temperature": contrastive_temperature,
                "sam_rho": sam_rho,
            }
        )
        # SAM takes two gradients of each batch before one optimiser step: Lightning's manual optimisation.
        self.automatic_optimization = not sam_rho
        # Speed options, not part of the model: left out of the hyperparameters, so a checkpoint
        # loads the same whatever they were during training.
        self.channels_last = channels_last
        self.compile_mode = compile
        self.class_names = list(class_names)
        # the dataset's mel parameters, for a net that places its bands in frequency (model.harmonics)
        placed = {"features": dict(features)} if net.get("harmonics") else {}
        self.net = instantiate(net, input_shape=tuple(input_shape), num_classes=len(class_names), **placed)
        num_classes = len(class_names)
        if contrastive_weight and "return_embedding" not in inspect.signature(self.net.forward).parameters:
            raise AmirError(
                f"module.contrastive_weight={contrastive_weight} needs a net whose forward can return its embedding "
                f"(return_embedding=True, as SegalConvNet's); {net.get('_target_')} has none: set it to 0"
            )
        # Training batches only (training_step); not part of the net, so never exported.
        self.augment = (
            instantiate(augment, scale=features["scale"], features=dict(features), num_classes=num_classes)
            if augment
            else None
        )
        # Training-step metrics must not wait for the GPU: the default NaN check and argument
        # validation each read a value back to the host, stalling every step (seen on an H200).
        # A NaN loss still shows: it propagates into train/loss.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_loss = MeanMetric()
        self.val_metrics = classification_metrics(num_classes)
        self.val_multilabel = multilabel_metrics(num_classes)
        self.test_loss = MeanMetric()
        self.test_metrics = classification_metrics(num_classes)
        self.test_multilabel = multilabel_metrics(num_classes)
        self.results: dict[str, dict] = {}  # stage -> computed metrics of the last epoch, on CPU
        self.eval_split = "test"  # which split the test loop is scoring (named in logs and results)
        self.trained_precision: str | None = None  # the trainer precision of a loaded checkpoint
        # Distillation teachers: loaded for fit only, in a plain list so that they are not submodules
        # (not in the checkpoint, the optimizer, DDP's gradient sync or train()/eval() switches).
        self._teachers: list[nn.Module] = []

    def load_teachers(self) -> None:
        """Load ``module.teachers`` (their nets, for their scores), once; amir-train calls it before the
        Trainer is built, so that a wrong path fails before a run starts."""
        if self.hparams.get("teachers") and not self._teachers:
            with torch.random.fork_rng(devices=[]):  # building their nets draws: keep the run's own stream
                self._teachers = [self._load_teacher(path) for path in self.hparams.teachers]

    def _load_teacher(self, path: str) -> nn.Module:
        """The net of a checkpoint whose scores the model learns to match: same classes, objective, front
        end and input."""
        where = Path(path)
        if not where.is_file():
            what = "a folder, not a checkpoint" if where.is_dir() else "no such file"
            raise AmirError(f"module.teachers: {path}: {what}; give the .ckpt files of trained runs")
        try:
            teacher = load_checkpoint(where)
        except AmirError as error:  # its message names ckpt_path=<path>: keep the reason, name the option
            raise AmirError(f"module.teachers: {path}: {str(error).split(': ', 1)[-1]}") from None

        def front_end(module: AmirModule) -> dict:  # the silence gate decides which clips, not what they hold
            return {k: v for k, v in (module.hparams.get("features") or {}).items() if k != "rms_threshold"}

        for what, mine, theirs in (
            ("classes", self.class_names, teacher.class_names),
            ("module.objective", self.objective, teacher.objective),
            ("features", front_end(self), front_end(teacher)),
            ("input shape", list(self.hparams.input_shape), list(teacher.hparams.input_shape)),
        ):
            if mine != theirs:
                raise AmirError(
                    f"module.teachers: {path} was trained with {what} {theirs}, this run has {mine}: give "
                    "teachers trained on data of this run's classes and features, with its module.objective"
                )
        return teacher.net.eval().requires_grad_(False)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.load_teachers()
            for teacher in self._teachers:  # Lightning gives setup the device the model will train on
                teacher.to(self.device)
                if self.channels_last:  # as configure_model does for the net: 2.6x faster on the 2-core Xeon
                    teacher.to(memory_format=torch.channels_last)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._teachers = []  # free them for testing; another fit loads them again

    def teacher_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' mean class scores (sigmoid or softmax, as the objective) for the batch ``x``."""
        with torch.no_grad():
            return torch.stack([self.scores(teacher(x.float()).float()) for teacher in self._teachers]).mean(dim=0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the trainer precision, so amir-evaluate reproduces a bf16-mixed run's figures."""
        checkpoint["amir_precision"] = str(self.trainer.precision)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_precision = checkpoint.get("amir_precision")
        saved = (checkpoint.get("hyper_parameters") or {}).get("sam_rho", 0.0)
        if bool(saved) != bool(self.hparams.get("sam_rho", 0.0)):  # Lightning counts the steps of each mode apart
            raise AmirError(
                f"resume: the checkpoint was trained with module.sam_rho={saved}, this run has "
                f"module.sam_rho={self.hparams.sam_rho}; SAM cannot be switched on or off in a resumed run: "
                f"resume with module.sam_rho={saved}, or start a new run"
            )

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

    def on_train_start(self) -> None:
        """Each DDP rank draws its own augmentation (seed_everything gives every rank the same seed)."""
        if self.augment is not None and self.global_rank > 0:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    @property
    def objective(self) -> str:
        return self.hparams.get("objective", "softmax")  # checkpoints from before the choice: softmax

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return class_scores(logits, self.objective)

    def _targets(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``, the class indices ``y`` and what the loss fits: ``y`` itself for a softmax model
        (as before targets existed) unless ``accompaniment_target`` makes the file's multi-hot
        ``targets`` count, else a target per class: 1 for the clip's instrument,
        ``accompaniment_target`` for every other one sounding in it. Validation and test label a
        clip with the classes whose target is 0.5 or more: what the model is trained to answer."""
        x, y, *extra = batch
        if self.objective == "softmax" and not (extra and self.hparams.accompaniment_target):
            return x, y, y
        target = F.one_hot(y, len(self.class_names)).float()
        if extra:
            target = torch.maximum(target, extra[0].float() * self.hparams.accompaniment_target)
        return x, y, target

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy (softmax; per-class targets are normalised into class probabilities) or binary
        cross-entropy per class summed over the classes (sigmoid; the asymmetric loss with
        ``negative_focus`` or ``negative_margin``; plus ``ranking_weight`` times the pairwise ranking loss),
        averaged (or summed) over the clips."""
        reduction = self.hparams.loss_reduction
        logits = logits.float()
        if self.objective == "sigmoid":
            focus, margin = self.hparams.get("negative_focus", 0.0), self.hparams.get("negative_margin", 0.0)
            if focus or margin:
                loss = asymmetric_loss(logits, target, focus, margin).sum(dim=1)
            else:
                loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
            if ranking := self.hparams.get("ranking_weight", 0.0):  # checkpoints from before the option: 0
                loss = loss + ranking * pairwise_ranking_loss(logits, target)
            return loss.mean() if reduction == "mean" else loss.sum()
        if target.ndim == 2:
            target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return F.cross_entropy(logits, target, reduction=reduction, label_smoothing=label_smoothing)

    def _soft_target_loss(self, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy per class summed over the classes (sigmoid) or cross-entropy (softmax) to
        probabilities, averaged (or summed) over the clips as ``_loss``."""
        logits = logits.float()
        if self.objective == "sigmoid":
            loss = F.binary_cross_entropy_with_logits(logits, scores, reduction="none").sum(dim=1)
            return loss.mean() if self.hparams.loss_reduction == "mean" else loss.sum()
        return F.cross_entropy(logits, scores, reduction=self.hparams.loss_reduction)

    def _step(self, batch, label_smoothing: float = 0.0):
        x, y, target = self._targets(batch)
        logits = self(x)
        return logits, y, target, self._loss(logits, target, label_smoothing)

    def training_step(self, batch, batch_idx):
        x, y, target = self._targets(batch)
        if self.augment is not None:
            # On the device that trains. Here rather than in on_after_batch_transfer: a resumed run
            # restores its RNG states in on_train_batch_start (fault_tolerance.RNGState), which comes
            # after that hook, so only here does it draw what the uninterrupted run drew.
            x, target = self.augment(x, target)
        # distillation: the teachers' scores of the same augmented batch, as soft targets
        teacher_scores = self.teacher_scores(x) if self._teachers else None
        clips_summed = len(y) if self.hparams.loss_reduction == "sum" else 1
        loss, logits = self._training_loss(x, y, target, teacher_scores, clips_summed)
        if not self.automatic_optimization:
            self._sam_step(loss, lambda: self._training_loss(x, y, target, teacher_scores, clips_summed)[0])
            # where Lightning steps an "epoch" scheduler: after the epoch's last optimiser step, before that
            # batch's callbacks, so a checkpoint saved at that step holds the stepped schedule
            last_batch = self.trainer.is_last_batch or batch_idx + 1 == self.trainer.num_training_batches
            if last_batch and (scheduler := self.lr_schedulers()) is not None:
                scheduler.step()
        mean_loss = loss.detach() / clips_summed
        # One value per clip (weights are ignored with nan_strategy="disable"): the epoch mean is per clip.
        self.train_loss.update(mean_loss.expand(len(y)))
        self.train_accuracy.update(logits.detach(), y)  # the clip's own class: the loudest in a mix
        # Not on the progress bar: Lightning turns progress-bar values into Python numbers after every
        # step, bar shown or not, and on a GPU each such read waits for the step to finish.
        self.log("train/loss_step", loss.detach(), batch_size=len(y))
        return loss

    def _training_loss(self, x, y, target, teacher_scores, clips_summed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of the (augmented) batch and its logits; ``clips_summed`` scales the per-clip mean
        contrastive term to the labels' loss (the batch size where that is summed, else 1)."""
        # Label smoothing is a training target only: validation and test losses are plain cross-entropy.
        contrastive = self.hparams.get("contrastive_weight", 0.0)  # checkpoints from before the option: 0
        if contrastive:
            logits, embedding = self.net(x.float(), return_embedding=True)
        else:
            logits = self(x)
        loss = self._loss(logits, target, self.hparams.label_smoothing)
        if teacher_scores is not None:
            weight = self.hparams.teacher_weight
            loss = (1 - weight) * loss + weight * self._soft_target_loss(logits, teacher_scores)
        if contrastive:  # the clip's own class (the loudest in a mix) names its positives
            temperature = self.hparams.contrastive_temperature
            loss = loss + contrastive * clips_summed * supervised_contrastive_loss(embedding, y, temperature)
        return loss, logits

    def _sam_step(self, loss: torch.Tensor, loss_again) -> None:
        """One step of sharpness-aware minimisation (Foret et al., ICLR 2021): the weights move by
        ``sam_rho`` along the batch's gradient, the gradient of the same batch is taken there
        (``loss_again``), and the optimiser applies it to the weights as they were (copied back, not
        subtracted: exact in any precision). Seeks weights whose whole neighbourhood has a low loss,
        which generalise better to data unlike the training set's. BatchNorm running statistics are
        updated by the first pass only; dropout draws its masks afresh in the second."""
        optimizer = self.optimizers()
        self.manual_backward(loss)
        params = [p for p in self.parameters() if p.grad is not None]
        with torch.no_grad():
            weights = [p.detach().clone() for p in params]
            grads = [p.grad for p in params]
            scale = self.hparams.sam_rho / (torch.nn.utils.get_total_norm(grads) + 1e-12)
            for param, grad in zip(params, grads):
                param.add_(grad * scale)
        optimizer.zero_grad()
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        momenta = [m.momentum for m in norms]
        for norm in norms:  # momentum 0: the running mean and variance stay as the first pass left them
            norm.momentum = 0.0
        try:
            self.manual_backward(loss_again())
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
        with torch.no_grad():
            for param, weight in zip(params, weights):
                param.copy_(weight)
        optimizer.step()
        optimizer.zero_grad()

    def on_train_epoch_end(self):
        # Synced by torchmetrics' compute(): no sync_dist (see _end_eval_epoch).
        self.log("train/loss", self.train_loss.compute())
        self.log("train/top1_error", 1 - self.train_accuracy.compute())
        self.train_loss.reset()
        self.train_accuracy.reset()

    def _eval_step(self, batch, loss_metric, metrics, multilabel):
        if not len(batch[1]):  # an empty shard (more ranks than clips): nothing to score on this rank
            return
        logits, y, target, loss = self._step(batch)
        mean_loss = loss / len(y) if self.hparams.loss_reduction == "sum" else loss
        loss_metric.update(mean_loss, len(y))
        metrics.update(logits, y)
        # the instruments a clip is labelled with: its own, and any sounding at a target of 0.5 or more
        labels = target >= 0.5 if target.ndim == 2 else F.one_hot(target, len(self.class_names))
        multilabel.update(self.scores(logits.float()), labels.int())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_loss, self.val_metrics, self.val_multilabel)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_loss, self.test_metrics, self.test_multilabel)

    def _end_eval_epoch(self, prefix: str, stage: str, loss_metric, metrics, multilabel):
        # compute() syncs the metric states across ranks: every clip counted once, the same values on
        # every rank. So they are logged as they are, on the device and without sync_dist: a CPU copy
        # with sync_dist would go through one more all-reduce, which NCCL refuses for CPU tensors.
        values = report.with_macro_averages(metrics.compute())
        values.update(multilabel.compute())
        values["loss"] = loss_metric.compute()
        loss_metric.reset()
        metrics.reset()
        multilabel.reset()
        if self.trainer.sanity_checking:
            return
        scalars = {
            f"{prefix}/loss": values["loss"],
            f"{prefix}/top1_error": 1 - values["accuracy"],
            f"{prefix}/f1_macro": values["f1_macro"],
            **{f"{prefix}/{name}": values[name] for name in MULTILABEL_LOGGED},
        }
        self.log_dict(scalars, prog_bar=True)
        values = {name: value.cpu() for name, value in values.items()}  # for reports only
        self.results[stage] = values
        if self.trainer.is_global_zero:
            report.log_to_tensorboard(self.loggers, prefix, values, self.class_names, self.global_step)

    def on_validation_epoch_end(self):
        self._end_eval_epoch("val", "val", self.val_loss, self.val_metrics, self.val_multilabel)

    def on_test_epoch_end(self):
        prefix = "test" if self.eval_split == "test" else f"eval_{self.eval_split}"
        self._end_eval_epoch(prefix, self.eval_split, self.test_loss, self.test_metrics, self.test_multilabel)

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _unreadable(path: Path, error: Exception) -> AmirError:
    if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) met a Python object
        return AmirError(
            f"ckpt_path={path}: holds Python objects beyond tensors and plain containers, which amir-pl "
            "does not unpickle (it runs no code from a checkpoint); use one written by amir-train"
        )
    return AmirError(f"ckpt_path={path}: not a readable amir-pl checkpoint ({type(error).__name__}: {error})")


def load_checkpoint(path: str | Path) -> AmirModule:
    """Rebuild the trained module from a checkpoint written by amir-train, running no code from it.

    ``torch.load(weights_only=True)`` unpickles only tensors and plain containers, and the net and
    optimizer are built only from the classes ``CHECKPOINT_TARGETS`` allows (checked before building).
    """
    path = Path(path)
    if not path.is_file():
        raise AmirError(f"ckpt_path={path}: no such file; point it at a .ckpt in a run's checkpoints/ folder")
    try:
        # mmap: the weights are not read here, only the hyperparameters are looked at
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        foreign = foreign_targets(checkpoint["hyper_parameters"])
    except Exception as error:  # a truncated file, another project's checkpoint, ...
        raise _unreadable(path, error) from None
    if foreign:
        allowed = ", ".join(f"{key}: {module}.*" for key, (module, _) in CHECKPOINT_TARGETS.items())
        raise AmirError(
            f"ckpt_path={path}: refusing to build {'; '.join(foreign)}: a checkpoint may only name "
            f"amir-pl's own classes ({allowed}); use a checkpoint written by amir-train"
        )
    net = checkpoint["hyper_parameters"].get("net")
    moved = {}
    if isinstance(net, Mapping) and _current_target(net.get("_target_")) != net.get("_target_"):
        moved["net"] = {**net, "_target_": _current_target(net["_target_"])}
    try:
        return AmirModule.load_from_checkpoint(path, map_location="cpu", weights_only=True, **moved)
    except Exception as error:
        raise _unreadable(path, error) from None
