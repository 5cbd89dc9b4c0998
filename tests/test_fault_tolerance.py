"""Resume after kill -9 or a preemption signal, and corrupt checkpoints."""

import logging
import os
import shlex
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_console_script

from amir_pl.core.errors import AmirError
from amir_pl.training.fault_tolerance import find_resume_checkpoint
from amir_pl.training.train import train

TESTS = Path(__file__).parent
# 80 training clips / 16 = 5 steps an epoch, 4 epochs = 20 steps; last.ckpt every 3 steps and each epoch end.
RUN = [
    *FAST,
    "trainer.max_epochs=4",
    "callbacks.last_checkpoint.every_n_train_steps=3",
    "+callbacks.crash._target_=crash.SignalAtStep",
]


# What srun sets for the one task of a hand-written sbatch job (Lightning's SLURMEnvironment reads these).
SLURM_TASK = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "amir",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def fake_scontrol(folder: Path, checkpoints: str) -> dict:
    """Environment with an ``scontrol`` on PATH that appends its arguments to ``folder/scontrol.log``,
    then the ``last.ckpt`` files matching the glob ``checkpoints`` at that moment."""
    (folder / "bin").mkdir(parents=True)
    script = folder / "bin" / "scontrol"
    script.write_text('#!/bin/sh\necho "$*" >> "$SCONTROL_LOG"\nls $SCONTROL_CHECKPOINTS >> "$SCONTROL_LOG" 2>&1\n')
    script.chmod(0o755)
    return {
        "PATH": f"{script.parent}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(folder / "scontrol.log"),
        "SCONTROL_CHECKPOINTS": checkpoints,
    }


def _train(
    tiny_h5,
    root: Path,
    *extra: str,
    crash_at: int | None = None,
    crash_signal: str = "SIGKILL",
    env: dict | None = None,
):
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    if crash_at is not None:
        env.update(CRASH_AT_STEP=str(crash_at), CRASH_SIGNAL=crash_signal)
    # A suite started in the background (`pytest &`, nohup) ignores SIGINT, and a child inherits that, so
    # amir-train would leave Ctrl-C alone, as it should when started so. These runs stand for one started
    # from a terminal: the child starts with the default disposition.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_console_script(
            "amir-train", f"data.path={tiny_h5}", *RUN, f"paths.root_dir={root}", *extra, cwd=root.parent, env=env
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _last(root: Path) -> dict:
    (last,) = root.glob("train/*/checkpoints/last.ckpt")
    return torch.load(last, map_location="cpu", weights_only=False)


def _assert_same_training(resumed: dict, reference: dict):
    assert resumed["global_step"] == reference["global_step"] == 20
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    ref_adam, res_adam = reference["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    for key in ref_adam:
        assert torch.equal(res_adam[key]["exp_avg"], ref_adam[key]["exp_avg"])


@pytest.fixture(scope="module")
def uninterrupted(tiny_h5, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference") / "outputs"
    result = _train(tiny_h5, root)
    assert result.returncode == 0, result.stderr[-3000:]
    return _last(root)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted_run(tiny_h5, tmp_path, uninterrupted):
    root = tmp_path / "outputs"
    # Workers read ahead of training: the resumed epoch must still start at the right batch.
    killed = _train(
        tiny_h5, root, "data.num_workers=2", "logger=tensorboard", crash_at=13
    )  # epoch 2, batch 3; last.ckpt is step 12
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = root.glob("train/*")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 12

    resumed = _train(tiny_h5, root, "data.num_workers=2", "logger=tensorboard", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"outputs continue in {run_dir}" in resumed.stdout + resumed.stderr
    _assert_same_training(_last(root), uninterrupted)
    # the same TensorBoard run, continued: one validation point per epoch, steps increasing
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val/top1_error")] == [4, 9, 14, 19]


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_preemption_signal_saves_a_checkpoint_then_resume_finishes(tiny_h5, tmp_path, uninterrupted, signame):
    root = tmp_path / "outputs"
    stopped = _train(tiny_h5, root, "logger=csv", crash_at=13, crash_signal=signame)  # handled at the end of step 14
    assert stopped.returncode == 128 + signal.Signals[signame], stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    (run_dir,) = root.glob("train/*")
    # one line: the signal (Ctrl-C for SIGINT), the epoch and step reached, the checkpoint, the command
    line = stopped.stderr.strip().splitlines()[-1]
    name = "Ctrl-C (SIGINT)" if signame == "SIGINT" else signame
    saved = f"saved {run_dir}/checkpoints/last.ckpt; to continue: amir-train "
    assert line.startswith(f"amir-train: stopped by {name} at epoch 2, step 14; {saved}"), line
    assert line.endswith(f" resume={run_dir}")
    assert _last(root)["global_step"] == 14  # saved by the signal, not by the every-3-steps schedule
    command = shlex.split(line.split("to continue: ", 1)[1])
    assert command[1:-1] == [f"data.path={tiny_h5}", *RUN, f"paths.root_dir={root}", "logger=csv"]
    resumed = run_console_script(command[0], *command[1:], cwd=root.parent, env={"PYTHONPATH": str(TESTS)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_training(_last(root), uninterrupted)


@pytest.mark.slow
def test_plain_slurm_job_saves_requeues_once_and_continues_in_its_own_folder(tiny_h5, tmp_path, uninterrupted):
    """An sbatch job with --signal=USR1@90 and no submitit: SIGUSR1 -> last.ckpt -> Lightning's
    ``scontrol requeue <job id>`` -> SLURM starts the same command again, which continues the run."""
    root = tmp_path / "outputs"
    slurm = {**SLURM_TASK, **fake_scontrol(tmp_path, f"{root}/train/*/checkpoints/last.ckpt")}
    stopped = _train(tiny_h5, root, "logger=csv", crash_at=13, crash_signal="SIGUSR1", env=slurm)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    (run_dir,) = root.glob("train/*")
    # requeued once, by rank 0, with last.ckpt (of step 14, saved by the signal) already on disk
    assert (tmp_path / "scontrol.log").read_text() == f"requeue 4242\n{run_dir}/checkpoints/last.ckpt\n"
    assert _last(root)["global_step"] == 14

    restarted = _train(tiny_h5, root, "logger=csv", env={**slurm, "SLURM_RESTART_COUNT": "1"})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert len(list(root.glob("train/*"))) == 2  # Hydra made the restart a new folder ...
    assert f"outputs continue in {run_dir}" in restarted.stdout + restarted.stderr  # ... but it continued the first
    assert (run_dir / "metrics.json").is_file()
    _assert_same_training(_last(root), uninterrupted)
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1


def test_a_requeued_slurm_job_finds_its_own_folder_not_another_jobs(compose_cfg, tiny_h5, tmp_path, monkeypatch):
    from amir_pl.training.train import _resume_checkpoint

    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    first = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"])
    first.paths.root_dir, first.paths.output_dir = str(tmp_path), str(tmp_path / "train" / "first")
    train(first)
    other = tmp_path / "train" / "other_job"  # the same command, another job, newer checkpoints
    shutil.copytree(tmp_path / "train" / "first", other)
    (other / ".slurm_job.json").write_text((other / ".slurm_job.json").read_text().replace("4242", "4243"))
    (other / "checkpoints" / "last.ckpt").touch()

    def start(restarts: str | None, *extra: str):
        if restarts is None:
            monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        else:
            monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv", *extra])
        cfg.paths.root_dir, cfg.paths.output_dir = str(tmp_path), str(tmp_path / "train" / "now")
        return _resume_checkpoint(cfg), cfg.paths.output_dir

    mine = tmp_path / "train" / "first" / "checkpoints" / "last.ckpt"
    assert start("1") == (mine, str(mine.parent.parent))  # requeued: its own folder, not the newer other job's
    assert start(None) == (None, str(tmp_path / "train" / "now"))  # a first start never resumes by itself
    assert start("1", "model.dropout.conv2=0")[0] is None  # another command in the same job: not this run
    assert start("1", f"resume={other}")[0] == other / "checkpoints" / "last.ckpt"  # an explicit resume= wins


def test_an_uncatchable_preemption_signal_is_refused_naming_the_option():
    from amir_pl.training.fault_tolerance import PreemptionCheckpoint

    for bad in ("SIGKILL", "SIGNOPE"):
        with pytest.raises(AmirError, match=r"callbacks\.preemption\.signals: .* SIGUSR1"):
            PreemptionCheckpoint(signals=[bad])


def test_resume_true_without_an_earlier_run_starts_afresh(tmp_path):
    assert find_resume_checkpoint(True, tmp_path / "now", tmp_path, ["data.path=x.h5", "resume=true"]) is None
    assert find_resume_checkpoint(False, tmp_path / "now", tmp_path, []) is None
    with pytest.raises(AmirError, match="no checkpoint there"):
        find_resume_checkpoint(str(tmp_path / "missing"), tmp_path / "now", tmp_path, [])


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(compose_cfg, tiny_h5, tmp_path, caplog):
    train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=2", "logger=csv"]))
    checkpoints = tmp_path / "checkpoints"
    last = checkpoints / "last.ckpt"
    (best,) = checkpoints.glob("epoch*.ckpt")
    last.write_bytes(last.read_bytes()[:5000])  # truncated, as a full disk would leave it

    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(str(tmp_path), tmp_path / "new", tmp_path, []) == best
    assert f"checkpoint {last} is unusable" in caplog.text

    best.write_text("not a checkpoint")
    with pytest.raises(AmirError, match="no usable checkpoint to resume from"):
        find_resume_checkpoint(str(last), tmp_path / "new", tmp_path, [])


def test_resume_from_a_run_folder_continues_there(compose_cfg, tiny_h5, tmp_path):
    first = train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"]))
    cfg = compose_cfg(
        "train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=2", "logger=csv", f"resume={tmp_path}"]
    )
    cfg.paths.output_dir = str(tmp_path / "elsewhere")
    second = train(cfg)
    assert cfg.paths.output_dir == str(tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert second["test"]["n"] == first["test"]["n"]


def test_a_requeued_submitit_job_continues_from_its_own_folder(compose_cfg, tiny_h5, tmp_path, monkeypatch):
    from amir_pl.training.train import _resume_checkpoint

    train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"]))
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "logger=csv"])  # resume=false
    assert _resume_checkpoint(cfg) is None  # an ordinary run never picks up checkpoints by itself
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert _resume_checkpoint(cfg) == tmp_path / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_kill_9_then_resume_with_augmentation_equals_uninterrupted_run(tiny_h5, tmp_path):
    """The augmentation draws from the RNG states that a resume restores before its first batch."""
    recipe = ["augment=full", "model.compression=db", "model.input_norm=band"]
    reference = tmp_path / "reference" / "outputs"
    reference.parent.mkdir()
    assert _train(tiny_h5, reference, *recipe).returncode == 0
    root = tmp_path / "run" / "outputs"
    root.parent.mkdir()
    assert _train(tiny_h5, root, *recipe, crash_at=13).returncode == -signal.SIGKILL
    resumed = _train(tiny_h5, root, *recipe, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_training(_last(root), _last(reference))


def test_checkpoints_are_written_once_beside_their_target(compose_cfg, tiny_h5, tmp_path, monkeypatch):
    import amir_pl.training.fault_tolerance as fault_tolerance

    written = []
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        written.append(Path(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(fault_tolerance.torch, "save", save)
    train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=2", "logger=csv"]))
    folder = tmp_path / "checkpoints"
    # last.ckpt twice and the best at least once, each written once, to a hidden name in the checkpoints folder
    assert len(written) >= 3 and all(path.parent == folder and path.name.startswith(".") for path in written)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [next(folder.glob("epoch*.ckpt")).name, "last.ckpt"]
    )  # no temporary file left


@pytest.mark.slow
def test_a_sam_run_resumed_from_an_epochs_last_step_equals_the_uninterrupted_one(tiny_h5, tmp_path):
    """With module.sam_rho (manual optimisation) the schedule is stepped where Lightning steps it, so a
    checkpoint saved at an epoch's last step (step 15: the every-3-steps save) holds that epoch's step."""
    sam = ["module.sam_rho=0.05", "scheduler=cosine"]
    reference_root = tmp_path / "reference"
    assert _train(tiny_h5, reference_root, *sam).returncode == 0
    root = tmp_path / "outputs"
    assert _train(tiny_h5, root, *sam, crash_at=16).returncode == -signal.SIGKILL
    assert _last(root)["global_step"] == 15
    (run_dir,) = root.glob("train/*")
    switched = _train(tiny_h5, root, "module.sam_rho=0", "scheduler=cosine", f"resume={run_dir}")
    assert switched.returncode == 2 and "Traceback" not in switched.stderr
    assert "module.sam_rho=0.05, this run has module.sam_rho=0" in switched.stderr
    resumed = _train(tiny_h5, root, *sam, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = _last(reference_root)
    _assert_same_training(_last(root), reference)
    assert (
        _last(root)["lr_schedulers"] == reference["lr_schedulers"] and reference["lr_schedulers"][0]["last_epoch"] == 4
    )
