"""A callback the fault-tolerance tests add to amir-train: at step $CRASH_AT_STEP it sends this
process $CRASH_SIGNAL (default SIGKILL), as a scheduler or an out-of-memory killer would."""

import os
import signal

from lightning.pytorch import Callback


class SignalAtStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = os.environ.get("CRASH_AT_STEP")
        if step is not None and trainer.global_step == int(step):
            os.kill(os.getpid(), signal.Signals[os.environ.get("CRASH_SIGNAL", "SIGKILL")])
