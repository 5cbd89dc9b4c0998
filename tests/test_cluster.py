"""Cluster launches: SLURM through submitit (config), submitit's local launcher, two nodes with torchrun."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from amir_pl.cli import CONFIG_DIR
from amir_pl.cluster import cluster_plugins
from conftest import FAST, TINY_CLASSES, TINY_SPLITS, run_console_script

N_TEST = TINY_SPLITS["test"] * len(TINY_CLASSES)  # 35: odd, so two ranks' shards differ and padding would show


def test_slurm_launcher_asks_for_one_task_per_gpu_on_each_node(tmp_path, monkeypatch):
    import submitit

    fake_srun = tmp_path / "bin" / "srun"  # submitit only checks that srun exists
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\nexit 0\n")
    fake_srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}{os.pathsep}{os.environ['PATH']}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                                "hydra.launcher.partition=gpu", "hydra.launcher.account=proj", "data.path=x.h5"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher")
    # what hydra-submitit-launcher does with these parameters
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "jobs",
                                     slurm_max_num_timeout=params["max_num_timeout"])
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
               "stderr_to_stdout"}
    executor.update_parameters(**{key if key in generic else f"slurm_{key}": value for key, value in params.items()
                                  if key not in {"_target_", "submitit_folder", "max_num_timeout"}})
    script = executor._executor._make_submission_file_text("python -m amir_pl.train", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--account=proj",
                 "--signal=USR2@120", "--time=240"):
        assert f"#SBATCH {line}\n" in script, line


def test_exactly_one_requeue_mechanism(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[1-2]")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    (own,) = cluster_plugins(4, 2)  # sbatch + srun by hand: Lightning requeues (SIGUSR1)
    assert isinstance(own, SLURMEnvironment) and own.auto_requeue
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    (submitit_job,) = cluster_plugins(4, 2)  # submitit requeues (SIGUSR2): Lightning's is off
    assert isinstance(submitit_job, SLURMEnvironment) and not submitit_job.auto_requeue


@pytest.mark.slow
def test_multirun_with_lightning_starting_ddp_processes_fails_clearly(tiny_h5, tmp_path):
    result = run_console_script("amir-train", "-m", f"data.path={tiny_h5}", "trainer=ddp_cpu", *FAST,
                                "model.dropout.conv2=0,0.5", f"paths.root_dir={tmp_path}", cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "a Hydra multirun (-m) cannot start DDP processes itself" in result.stderr
    assert "hydra/launcher=local" in result.stderr


@pytest.mark.slow
def test_local_submitit_sweep_runs_each_point_as_a_two_process_ddp_job(tiny_h5, tmp_path):
    result = run_console_script("amir-train", "-m", "hydra/launcher=local", "trainer=ddp_cpu", f"data.path={tiny_h5}",
                                *FAST, "trainer.max_epochs=1", "logger=csv", "model.dropout.conv2=0,0.5",
                                f"paths.root_dir={tmp_path}", cwd=tmp_path)
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
            [torchrun, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}", "--master-addr=127.0.0.1",
             f"--master-port={port}", "-m", "amir_pl.train", f"data.path={tiny_h5}", "trainer=ddp_cpu",
             "trainer.devices=1", "trainer.num_nodes=2", *FAST, "trainer.max_epochs=1", "logger=csv",
             f"hydra.run.dir={run_dir}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert test["n"] == N_TEST and sum(map(sum, test["confusion_matrix"])) == N_TEST
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
