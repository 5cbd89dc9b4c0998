"""Cluster launches: SLURM through submitit (against a local sbatch/srun stand-in) and its requeue,
submitit's local launcher, two nodes with torchrun."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, TINY_CLASSES, TINY_SPLITS, run_console_script
from omegaconf import OmegaConf

N_TEST = TINY_SPLITS["test"] * len(TINY_CLASSES)  # 35: odd, so two ranks' shards differ and padding would show


# A SLURM cluster on this machine, enough for submitit: ``sbatch`` keeps the script it was given and runs
# it in the background (submitit's job waits for its pickle, written after sbatch answers); ``srun``
# starts nodes x tasks-per-node copies of the command with the variables srun sets, all on localhost.
FAKE_SBATCH = """#!{python}
import os, re, subprocess, sys
from pathlib import Path

script = Path(sys.argv[-1])
text = script.read_text()
if sys.argv[1] != "--run":
    with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
        log.write(text)
    subprocess.Popen([sys.executable, __file__, "--run", str(script)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("Submitted batch job 4242")
    sys.exit(0)
options = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", text, re.M))
nodes, per_node = int(options.get("nodes", 1)), int(options.get("ntasks-per-node", 1))
last = int(options["array"].split("%")[0].split("-")[1]) if "array" in options else None
for index in [None] if last is None else range(last + 1):
    env = dict(os.environ, SLURM_JOB_ID=str(4242 if index is None else 4243 + index),
               SLURM_JOB_NAME=options.get("job-name", "job"), SLURM_NNODES=str(nodes), SLURM_JOB_NUM_NODES=str(nodes),
               SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node), SLURM_NODELIST="localhost")
    if index is not None:
        env.update(SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID=str(index))
    subprocess.run(["bash", str(script)], env=env)
"""

FAKE_SRUN = """#!{python}
import os, socket, subprocess, sys

args, files = sys.argv[1:], {{}}
while args[0].startswith("-"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
per_node, tasks = int(os.environ["SLURM_NTASKS_PER_NODE"]), int(os.environ["SLURM_NTASKS"])
procs = []
for rank in range(tasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), MASTER_PORT=port)
    streams = []
    for option in ("--output", "--error"):
        name = files.get(option, os.devnull)
        for key, value in (("%A", env.get("SLURM_ARRAY_JOB_ID", "")), ("%a", env.get("SLURM_ARRAY_TASK_ID", "")),
                           ("%j", env["SLURM_JOB_ID"]), ("%t", str(rank))):
            name = name.replace(key, value)
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        streams.append(open(name, "a"))
    procs.append(subprocess.Popen(args, env=env, stdout=streams[0], stderr=streams[1]))
sys.exit(max(proc.wait() for proc in procs))
"""


@pytest.mark.slow
def test_slurm_launcher_submits_one_task_per_device_and_the_job_trains_under_srun(tiny_h5, tmp_path):
    """``-m hydra/launcher=slurm`` through hydra-submitit-launcher and submitit, against a local stand-in
    for sbatch/srun: the sbatch script asks for one task (and GPU) per device, and the job it describes
    runs as a 2-process DDP job whose ranks come from SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_LOG": str(tmp_path / "sbatch.log")}
    result = run_console_script(
        "amir-train",
        "-m",
        "hydra/launcher=slurm",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj",
        f"data.path={tiny_h5}",
        *FAST,
        "trainer.max_epochs=1",
        "logger=csv",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
        env=env,
        timeout=400,
    )  # submitit waits for a job that never ends
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    script = (tmp_path / "sbatch.log").read_text()
    for line in (
        "--nodes=1",
        "--ntasks-per-node=2",
        "--gpus-per-node=2",
        "--cpus-per-task=8",
        "--partition=gpu",
        "--account=proj",
        "--signal=USR2@120",
        "--time=240",
    ):
        assert f"#SBATCH {line}\n" in script, line
    (job,) = (tmp_path / "train" / "multirun").glob("*/0")
    test = json.loads((job / "metrics.json").read_text())["test"]
    assert test["n"] == N_TEST  # two ranks, each clip counted once
    rank_1 = "".join(path.read_text() for path in (job.parent / ".submitit" / "4242").glob("4242_1_log.*"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank_1  # srun's second task, not a process Lightning started


@pytest.mark.parametrize("signame, requeued", [("SIGUSR2", True), ("SIGUSR1", False)])
def test_under_submitit_the_one_requeue_is_submitits_after_the_save(
    compose_cfg, tiny_h5, tmp_path, monkeypatch, signame, requeued
):
    """A job submitit runs on SLURM, with submitit's real signal handlers: SIGUSR2 saves last.ckpt, then
    submitit runs ``scontrol requeue`` once; Lightning's SIGUSR1 requeue is off there, so SIGUSR1 only saves."""
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.slurm.slurm import SlurmJobEnvironment
    from test_fault_tolerance import SLURM_TASK, fake_scontrol

    from amir_pl.training.fault_tolerance import Preempted
    from amir_pl.training.train import train

    last = tmp_path / "checkpoints" / "last.ckpt"
    for name, value in {**SLURM_TASK, **fake_scontrol(tmp_path / "fake", str(last))}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("CRASH_AT_STEP", "3")
    monkeypatch.setenv("CRASH_SIGNAL", signame)
    delayed = DelayedSubmission(print)  # submitit's job: here one with no checkpoint method, requeued as it is
    delayed.set_timeout(timeout_min=240, max_num_timeout=3)
    caught = (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR2)
    previous = {sig: signal.getsignal(sig) for sig in caught}
    SlurmJobEnvironment()._handle_signals(JobPaths(tmp_path / "submitit", job_id="4242"), delayed)
    cfg = compose_cfg(
        "train",
        [
            f"data.path={tiny_h5}",
            *FAST,
            "logger=csv",
            "callbacks.last_checkpoint.every_n_train_steps=null",
            "+callbacks.crash._target_=crash.SignalAtStep",
        ],
    )
    try:
        with pytest.raises(SystemExit if requeued else Preempted):  # submitit exits after requeueing
            train(cfg)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log = tmp_path / "fake" / "scontrol.log"
    # once, with last.ckpt already there when scontrol ran
    assert (log.read_text() if log.exists() else "") == (f"requeue 4242\n{last}\n" if requeued else "")
    assert torch.load(last, weights_only=False)["global_step"] == 4  # saved at the step after the signal


@pytest.mark.slow
def test_multirun_with_lightning_starting_ddp_processes_fails_clearly(tiny_h5, tmp_path):
    result = run_console_script(
        "amir-train",
        "-m",
        f"data.path={tiny_h5}",
        "trainer=ddp_cpu",
        *FAST,
        "model.dropout.conv2=0,0.5",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0
    assert "a Hydra multirun (-m) cannot start DDP processes itself" in result.stderr
    assert "hydra/launcher=local" in result.stderr


@pytest.mark.slow
def test_local_submitit_sweep_runs_each_point_as_a_two_process_ddp_job(tiny_h5, tmp_path):
    result = run_console_script(
        "amir-train",
        "-m",
        "hydra/launcher=local",
        "trainer=ddp_cpu",
        f"data.path={tiny_h5}",
        *FAST,
        "trainer.max_epochs=1",
        "logger=csv",
        "model.dropout.conv2=0,0.5",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multirun").iterdir()
    for job, dropout in (("0", 0.0), ("1", 0.5)):
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").model.dropout.conv2 == dropout
        test = json.loads((sweep / job / "metrics.json").read_text())["test"]
        assert test["n"] == N_TEST  # two ranks, each clip counted once
    logs = list(sweep.glob(".submitit/*/*_1_log.err"))  # rank 1 of each job: its own process
    assert len(logs) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_nodes_on_localhost_with_torchrun(tiny_h5, tmp_path):
    """Two "nodes" of one CPU process each (gloo), started as on two machines: every clip counted once."""
    port, run_dir = _free_port(), tmp_path / "run"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    nodes = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "amir_pl.apps.train",
                f"data.path={tiny_h5}",
                "trainer=ddp_cpu",
                "trainer.devices=1",
                "trainer.num_nodes=2",
                *FAST,
                "trainer.max_epochs=1",
                "logger=csv",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert test["n"] == N_TEST and sum(map(sum, test["confusion_matrix"])) == N_TEST
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
