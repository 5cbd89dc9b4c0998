"""Weight averaging (``callbacks.weight_averaging``): Lightning's exponential moving average of the
weights, validated, checkpointed and scored in place of the raw weights."""

from __future__ import annotations

import warnings

from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMAWeights(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose checkpoints score as the average they hold.

    Lightning's callback writes the average into a checkpoint's ``state_dict`` (so amir-evaluate,
    amir-predict and amir-export load the average) and the raw weights beside it, for resuming. When
    the same Trainer then tests that checkpoint, as amir-train does with the best one after fit,
    the parent would put the raw weights back; outside fit the average is meant, so it is kept.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            # AmirModule.configure_model only sets channels_last / compile: nothing is sharded.
            warnings.filterwarnings("ignore", message=".*overrides the configure_model")
            super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
