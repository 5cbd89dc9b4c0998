"""Where the training processes come from, and the one requeue mechanism.

Whoever requeues, ``PreemptionCheckpoint`` (amir_pl.training.fault_tolerance) catches the signal first:
it saves ``last.ckpt`` after the current batch, then calls the requeue handler that was
installed before it, and the run stops (exit 128 + signal).

* SLURM through submitit (``hydra/launcher=slurm``): srun starts one task per GPU and
  Lightning's ``SLURMEnvironment`` takes the ranks from SLURM. Submitit requeues on
  timeout or preemption (SIGUSR2); Lightning's own auto-requeue is switched off, so
  there is one requeue, not two.
* SLURM without submitit (your own sbatch + srun, ``#SBATCH --signal=USR1@90``):
  Lightning's auto-requeue is on, and its SIGUSR1 handler runs ``scontrol requeue``
  after the save. The restarted job finds its first run folder by its job id.
* submitit's local launcher (``hydra/launcher=local``): submitit starts the tasks and
  we export the torch.distributed variables (RANK, LOCAL_RANK, MASTER_ADDR, ...) so
  Lightning joins them instead of starting its own.
* torchrun, or LOCAL_RANK/NODE_RANK/MASTER_ADDR set by hand: Lightning joins those.
* Otherwise Lightning starts the other ranks itself by re-running the command, which
  cannot work inside a Hydra multirun: ``check_launch`` refuses that combination.
"""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from amir_pl.core.errors import AmirError


def cluster_plugins(devices, num_nodes: int) -> list:
    """Trainer plugins for the environment this process runs in (see the module docstring)."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    if executor == "local" and int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        import submitit.helpers

        tasks = int(os.environ["SUBMITIT_LOCAL_NTASKS"])
        if devices != tasks or num_nodes != 1:
            raise AmirError(
                f"hydra/launcher=local starts {tasks} processes but trainer.devices={devices}, "
                f"trainer.num_nodes={num_nodes}: set hydra.launcher.tasks_per_node to trainer.devices"
            )
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=executor != "slurm")]
    return []


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(trainer) -> None:
    """AmirError for Hydra multirun with Lightning's own process launching (it would hang)."""
    launcher = trainer.strategy.launcher
    environment = getattr(trainer.strategy, "cluster_environment", None)
    starts_processes = (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not (environment is not None and environment.creates_processes_externally)
        and (launcher.num_processes > 1 or launcher.num_nodes > 1)
    )
    if _in_multirun() and starts_processes:
        raise AmirError(
            "a Hydra multirun (-m) cannot start DDP processes itself (Lightning would re-run the whole sweep "
            "in every rank). Use -m hydra/launcher=slurm (cluster) or -m hydra/launcher=local (this machine), "
            "which start one process per device; or run each sweep point as its own amir-train command"
        )
