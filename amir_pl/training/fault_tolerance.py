"""Fault tolerance: checkpoints a run can resume from at any step, preemption signals, and
finding the checkpoint to resume.

A Lightning checkpoint already holds the weights, optimizer, epoch and step. Two more
things make a resumed run train exactly like an uninterrupted one: the position inside
the epoch (``H5DataModule.state_dict``: the batches already trained are skipped) and
every rank's RNG state (``RNGState``: dropout masks continue where they stopped).
Checkpoints are written under a temporary name and renamed (``AtomicCheckpointIO``), so
a kill -9 during a save never leaves a truncated file at a checkpoint path.

Preemption and requeue, one mechanism: ``PreemptionCheckpoint`` owns SIGTERM, SIGUSR1 and
SIGUSR2. The signal only sets a flag; after the current batch (all ranks agreeing) it saves
``last.ckpt``, then hands the requeue signal to the handler that was there before it, and
stops. That handler is the requeue: Lightning's (``SLURMEnvironment(auto_requeue=True)``,
a hand-written sbatch job with ``--signal=USR1@90``: ``scontrol requeue``) or submitit's
(SIGUSR2 under ``hydra/launcher=slurm``; ``amir_pl.training.cluster`` switches Lightning's off there),
so exactly one requeue runs, after the checkpoint is on disk. The signal is not left to
Lightning alone: its handler saves in the middle of a step, from inside the signal handler,
with no agreement between ranks, and to a file ``resume=`` does not look at.

A requeued job starts again with the same command in a new Hydra folder. Submitit's jobs
keep their folder; a plain SLURM job records its job id in its folder (``.slurm_job.json``)
and, when SLURM restarts it (``SLURM_RESTART_COUNT`` > 0), continues in the folder that holds
its id and its checkpoints (``requeued_slurm_run``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write
from amir_pl.training.precision import FP32

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written once, under a temporary name beside the target, and renamed when complete.

    Lightning's own ``_atomic_save`` writes the file into the system's temporary folder first and then
    moves it (a second write when that folder is on another file system, and a failure where ``/tmp``
    is small or in RAM although the run folder has room). Remote paths (``s3://``...) keep Lightning's
    fsspec writer.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps *and* at every epoch end.

    Lightning's ModelCheckpoint takes one trigger (steps or epochs); this adds the epoch
    end to the step trigger (after validation, so the file holds that epoch's metrics).
    """

    def __init__(self, dirpath, every_n_train_steps: int | None = None, **kwargs):
        super().__init__(
            dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps, **kwargs
        )

    def _save_last_at_epoch_end(self, trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_at_epoch_end(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_at_epoch_end(trainer)


class RNGState(Callback):
    """Saves every rank's torch/numpy/python (and CUDA) RNG states in each checkpoint.

    They are restored just before the first batch trained after a resume, not at load
    time: between loading and that batch Lightning runs a sanity check and builds data
    loaders, which an uninterrupted run does not do at that point.
    """

    def __init__(self) -> None:
        self._pending: list[dict] | None = None

    @staticmethod
    def _collect() -> dict:
        """The RNG states in types ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
        states = _collect_rng_states()
        name, keys, *rest = states["numpy"]
        states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), *rest)
        return states

    @staticmethod
    def _restore(states: dict) -> None:
        name, keys, *rest = states["numpy"]
        _set_rng_states({**states, "numpy": (name, keys.numpy().astype(np.uint32), *rest)})

    def state_dict(self) -> dict:
        states = self._collect()
        if dist.is_available() and dist.is_initialized():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("per_rank")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        if trainer.global_rank < len(states):
            self._restore(states[trainer.global_rank])
        else:
            log.warning(
                "checkpoint has RNG states for %d ranks, not %d: rank %d starts new streams",
                len(states),
                trainer.world_size,
                trainer.global_rank,
            )


def _catchable_signal(name) -> signal.Signals:
    """``callbacks.preemption.signals`` entry -> the signal, or an AmirError naming the option."""
    try:
        if isinstance(name, str):
            upper = name.upper()
            signum = signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]  # USR1 as sbatch writes it
        else:
            signum = signal.Signals(name)
    except (KeyError, ValueError):
        signum = None
    if signum is None or signum in (signal.SIGKILL, signal.SIGSTOP):
        raise AmirError(
            f"callbacks.preemption.signals: {name!r} is not a signal a process can catch; "
            "use names such as SIGTERM, SIGUSR1, SIGUSR2"
        )
    return signum


class Preempted(Exception):
    """Training stopped on a signal after saving ``path`` at ``epoch`` and global ``step``."""

    def __init__(self, signum: int, path: Path, handed_to: str | None = None, epoch: int = 0, step: int = 0):
        self.signum, self.path, self.handed_to, self.epoch, self.step = signum, path, handed_to, epoch, step
        then = f"; then handed the signal to {handed_to} (the requeue)" if handed_to else ""
        name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(f"stopped by {name} at epoch {epoch}, step {step}; saved {path}{then}")


def _handler_name(handler) -> str:
    """Who a signal handler is, for the log: Lightning wraps its handlers in a ``_HandlersCompose``."""
    handlers = getattr(handler, "signal_handlers", None) or [handler]
    return ", ".join(getattr(h, "__qualname__", type(h).__qualname__) for h in handlers)


class PreemptionCheckpoint(Callback):
    """On a preemption signal: finish the current batch, save ``last.ckpt``, stop.

    The signal only sets a flag. A single process checks it after every step (free); in a
    multi-process run the ranks agree on it every ``check_every_n_steps`` steps (one
    all-reduce, which waits for the GPU, so not every step), then all save together and
    raise ``Preempted`` (amir-train exits with 128 + the signal number). For SIGUSR1/SIGUSR2
    the handler that was there before runs after the save, on every rank: Lightning's SLURM
    requeue or submitit's, so the job is requeued with the checkpoint already on disk. SIGTERM
    is not handed on: the job is ending, and Lightning's SIGTERM handler would only stop the
    loop (and signal the other ranks) a second time.
    """

    def __init__(self, signals: list[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2"), check_every_n_steps: int = 1):
        self.signals = [_catchable_signal(name) for name in signals]
        self.check_every_n_steps = max(1, check_every_n_steps)
        self._received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._received == signal.SIGINT:  # a second Ctrl-C: stop at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._received = signum
        log.warning("received %s: saving a checkpoint after this batch", signal.Signals(signum).name)

    def on_train_start(self, trainer, pl_module) -> None:
        """After Lightning has registered its own handlers (kept as the previous ones); loader workers
        ignore these signals (``H5DataModule``), so one reaching the whole process group reaches this
        process only."""
        self._received = None
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if sig == signal.SIGINT and previous is signal.SIG_IGN:
                continue  # started in the background (`cmd &`): Ctrl-C is not this process's to take
            self._previous[sig] = previous
            signal.signal(sig, self._handle)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handlers()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size > 1 and trainer.global_step % self.check_every_n_steps:
            return
        if not trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            return
        # The ranks agree on *which* signal too: a rank whose copy has not arrived yet must take the same
        # path as the others (Lightning's requeue handler saves collectively, so a rank leaving would hang it).
        signum = (
            int(trainer.strategy.reduce(torch.tensor(self._received or 0, device=pl_module.device), reduce_op="max"))
            or signal.SIGTERM
        )
        path = last_checkpoint_path(trainer)
        # complete on every rank when this returns (a barrier follows the save)
        trainer.save_checkpoint(path, weights_only=False)
        previous = self._previous.get(signum)
        reached = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        if signum in (signal.SIGTERM, signal.SIGINT) or not callable(previous):
            raise Preempted(signum, path, **reached)  # on_exception puts the previous handlers back
        log.info("saved %s; handing %s over to %s", path, signal.Signals(signum).name, _handler_name(previous))
        # Lightning's requeue (it also writes its own hpc_ckpt_<n>.ckpt, then rank 0 runs scontrol requeue)
        # or submitit's (rank 0 requeues and exits here); both return on the other ranks. Our handler stays
        # until on_exception: a copy of the signal reaching a rank late only sets the flag again, instead of
        # starting a second, unsynchronised save in the previous handler.
        previous(signum, None)
        raise Preempted(signum, path, handed_to=_handler_name(previous), **reached)


def last_checkpoint_path(trainer) -> Path:
    """Where ``last.ckpt`` goes: the folder of the ModelCheckpoint that keeps the last checkpoint."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return Path(callback.dirpath) / LAST
    return Path(trainer.default_root_dir) / CHECKPOINT_DIR / LAST


class NonFiniteLoss(AmirError):
    """Training stopped at a step whose loss was NaN or infinite."""


NO_BAD_STEP = 2**62


class StopOnNonFiniteLoss(Callback):
    """Stops training at the first step whose loss is NaN or infinite, before any checkpoint holds its weights.

    Without it a run with bad rows trains to the end on NaN weights and keeps a "best" checkpoint of
    them. The first bad step, and whether that batch's features were finite, are tracked on the device
    (no host read in a step: on a GPU each would wait for it); they are read every
    ``check_every_n_steps`` steps, at each epoch end and before every checkpoint is written, the ranks
    agreeing, so no checkpoint after the bad step is saved and the step named is exact.
    """

    def __init__(self, check_every_n_steps: int = 10):
        self.check_every_n_steps = max(1, check_every_n_steps)
        self._first_bad: torch.Tensor | None = None  # the global step of the first non-finite loss
        self._bad_features: torch.Tensor | None = None  # were that batch's features NaN or infinite?

    def on_train_start(self, trainer, pl_module) -> None:
        self._first_bad = torch.tensor(NO_BAD_STEP, device=pl_module.device)
        self._bad_features = torch.tensor(False, device=pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad is None:
            return
        step = trainer.global_step - 1  # the optimizer step this loss made
        first = ~torch.isfinite(loss.detach()).all() & (self._first_bad == NO_BAD_STEP)
        self._first_bad = torch.where(first, step, self._first_bad)
        self._bad_features = self._bad_features | (first & ~torch.isfinite(batch[0]).all())
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._check(trainer)  # raising here writes nothing: the file would hold the NaN weights
        # A finite loss can still leave non-finite weights (an overflow in the backward pass).
        finite = torch.stack([torch.isfinite(p).all() for p in pl_module.parameters()]).all()
        if float(trainer.strategy.reduce((~finite).float(), reduce_op="max")):
            self._first_bad = None
            raise NonFiniteLoss(
                f"the weights are not finite at step {trainer.global_step} (epoch {trainer.current_epoch}) although "
                f"every training loss was: training stopped before saving them; lower the learning rate "
                f"(optimizer.lr=) or train in trainer.precision={FP32}; " + self._kept(trainer)
            )

    def _check(self, trainer) -> None:
        if self._first_bad is None:
            return
        first_bad = int(trainer.strategy.reduce(self._first_bad.clone(), reduce_op="min"))
        if first_bad == NO_BAD_STEP:
            return
        bad_features = bool(trainer.strategy.reduce(self._bad_features.float(), reduce_op="max"))
        self._first_bad = None  # stop checking: the run ends here
        raise NonFiniteLoss(self._message(trainer, first_bad, bad_features))

    def _message(self, trainer, step: int, bad_features: bool) -> str:
        data = f"data.path={getattr(trainer.datamodule, 'path', '?')}"
        if bad_features:
            cause = f"that batch's features are NaN or infinite: rows of {data} are bad; re-create it with amir-prepare"
        else:
            ran_in = "" if str(trainer.precision) == FP32 else f", it ran in {trainer.precision}"
            cause = (
                f"check the training rows of {data}, the learning rate (optimizer.lr=) "
                f"and the precision (trainer.precision={FP32}{ran_in})"
            )
        return (
            f"training loss is not finite at step {step} (epoch {trainer.current_epoch}): training stopped; {cause}; "
            + self._kept(trainer)
        )

    @staticmethod
    def _kept(trainer) -> str:
        kept = {
            path
            for callback in trainer.checkpoint_callbacks
            for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
            if path and Path(path).is_file()
        }
        return f"kept from before it: {', '.join(sorted(kept))}" if kept else "no checkpoint was written before it"


# ---------------------------------------------------------------------------------------------
# Finding what to resume


def _is_resume_override(override: str) -> bool:
    return override.lstrip("+").split("=", 1)[0] == "resume"


def checkpoints_in(folder: Path) -> list[Path]:
    """``last.ckpt`` first, then the other checkpoints, newest first."""
    found = [p for p in folder.glob("*.ckpt") if p.is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: (p.name != LAST, -p.stat().st_mtime))


def _earlier_run_of_same_command(runs_root: Path, current_run: Path, overrides: list[str]) -> Path | None:
    """The most recent run under ``runs_root`` started with the same overrides that has checkpoints."""
    wanted = sorted(o for o in overrides if not _is_resume_override(o))
    matches = []
    for overrides_file in runs_root.glob("**/.hydra/overrides.yaml"):
        run = overrides_file.parent.parent
        if run.resolve() == current_run.resolve():
            continue
        try:
            theirs = sorted(o for o in OmegaConf.load(overrides_file) if not _is_resume_override(str(o)))
        except Exception:
            continue
        if theirs == wanted:
            matches.append(run)
    return _most_recently_saved(matches)


def _most_recently_saved(runs) -> Path | None:
    """The run among ``runs`` whose newest checkpoint is the newest; None if none has checkpoints."""
    saved = [
        (max(p.stat().st_mtime for p in found), run) for run in runs if (found := checkpoints_in(run / CHECKPOINT_DIR))
    ]
    return max(saved, key=lambda item: item[0])[1] if saved else None


def _loadable(path: Path) -> str | None:
    """None if ``path`` is a complete Lightning training checkpoint, else what is wrong with it.

    Loaded with ``weights_only=True`` (no code from the file runs) and checked against the
    ``_target_``s a checkpoint may name, as amir-evaluate does.
    """
    from amir_pl.training.module import foreign_targets

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return "holds Python objects beyond tensors and plain containers, which amir-pl does not unpickle"
    except Exception as error:  # truncated zip, not a checkpoint at all, ...
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    missing = [key for key in ("state_dict", "loops", "optimizer_states") if key not in checkpoint]
    if missing:
        return f"not a training checkpoint (no {', '.join(missing)})"
    foreign = foreign_targets(checkpoint.get("hyper_parameters") or {})
    return f"refused: it names {'; '.join(foreign)}, not one of amir-pl's own classes" if foreign else None


def first_loadable(candidates: list[Path]) -> Path:
    """The first candidate that loads; a warning for each corrupt one passed over."""
    problems = []
    for path in candidates:
        problem = _loadable(path)
        if problem is None:
            if problems:
                log.warning("resuming from the previous checkpoint %s instead", path)
            return path
        log.warning("checkpoint %s is unusable (%s)", path, problem)
        problems.append(f"{path}: {problem}")
    raise AmirError(
        "no usable checkpoint to resume from: "
        + "; ".join(problems)
        + ". Start afresh without resume= (or with resume=false), or point resume= at another checkpoint"
    )


def find_resume_checkpoint(resume, run_dir: Path, runs_root: Path, overrides: list[str]) -> Path | None:
    """The checkpoint ``resume=`` asks for, or None to start afresh.

    ``resume=true``: this run folder's checkpoints (a requeued SLURM job reuses its folder),
    else the latest earlier run of the same command (same overrides), else start afresh.
    ``resume=<run folder or .ckpt file>``: that one (a corrupt file falls back to the
    other checkpoints beside it).
    """
    if resume is None or resume is False or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        candidates = checkpoints_in(run_dir / CHECKPOINT_DIR)
        if not candidates:
            earlier = _earlier_run_of_same_command(runs_root, run_dir, overrides)
            if earlier is None:
                log.info("resume=true: no earlier run of this command under %s; starting afresh", runs_root)
                return None
            candidates = checkpoints_in(earlier / CHECKPOINT_DIR)
        return first_loadable(candidates)
    path = Path(str(resume)).expanduser()
    if path.is_file():
        return first_loadable([path, *[p for p in checkpoints_in(path.parent) if p != path]])
    if path.is_dir():
        candidates = checkpoints_in(path / CHECKPOINT_DIR) or checkpoints_in(path)
        if candidates:
            return first_loadable(candidates)
    raise AmirError(
        f"resume={resume}: no checkpoint there (expected a .ckpt file or a run folder with "
        f"{CHECKPOINT_DIR}/{LAST}); use resume=true to find the last run of this command"
    )


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    folder = checkpoint.resolve().parent
    return folder.parent if folder.name == CHECKPOINT_DIR else folder


# ---------------------------------------------------------------------------------------------
# A plain SLURM job that SLURM requeued: its own run folder

SLURM_JOB_FILE = ".slurm_job.json"


def slurm_job_id() -> str | None:
    """This job's id as ``scontrol requeue`` takes it (``<array job>_<task>`` in an array), or None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID") or None


def _plain_slurm_job() -> str | None:
    """The job id when SLURM (not submitit, which keeps its own folders) started this process."""
    return None if os.environ.get("SUBMITIT_EXECUTOR") else slurm_job_id()


def record_slurm_job(run_dir: Path, overrides: list[str]) -> None:
    """Write this SLURM job's id and command into its run folder, for the job to find it once requeued."""
    job = _plain_slurm_job()
    marker = run_dir / SLURM_JOB_FILE
    if job is None or marker.is_file():
        return
    record = {"job_id": job, "overrides": sorted(o for o in overrides if not _is_resume_override(o))}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"))


def requeued_slurm_run(runs_root: Path, run_dir: Path, overrides: list[str]) -> Path | None:
    """The folder this job trained in before SLURM requeued it, or None (not a requeued SLURM job).

    A requeued job (``SLURM_RESTART_COUNT`` > 0) runs the same command again, and Hydra gives it
    a new timestamped folder. Its first start recorded the job id there (``record_slurm_job``):
    the folder with this job id, this command and the newest checkpoints is its own, never that
    of another job that ran the same command.
    """
    job = _plain_slurm_job()
    if job is None or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    wanted = sorted(o for o in overrides if not _is_resume_override(o))
    matches = []
    for marker in {run_dir / SLURM_JOB_FILE, *runs_root.glob(f"**/{SLURM_JOB_FILE}")}:
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if record.get("job_id") == job and record.get("overrides") == wanted:
            matches.append(marker.parent)
    own = _most_recently_saved(matches)
    if own is None:
        log.info("SLURM job %s restarted, but no earlier run folder of it has checkpoints; starting afresh", job)
    return own
