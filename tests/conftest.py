"""Shared fixtures: small dataset files written by the tests, Hydra configs composed as the apps do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from amir_pl.dataset.schema import write_synthetic
from amir_pl.features.params import FeatureParams

# 32 mels x 33 frames keeps the net small enough for a 2-core CPU; the 128 x 130 shape is tested directly.
TINY_FEATURES = FeatureParams(n_mels=32, clip_samples=32 * 512)
TINY_CLASSES = ("electric_bass", "cello", "drums", "flute", "piano")
# 35 test clips: an odd count, so two DDP ranks get unequal shards and padding would show.
TINY_SPLITS = {"train": 16, "val": 5, "test": 7}

# Settings that keep a test run to seconds: no workers (spawn cost), no progress bar; float32 whatever the
# CPU (trainer.precision=auto would pick bf16 on some): tests/test_precision.py trains in each precision.
FAST = [
    "trainer.precision=32-true",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "data.batch_size=16",
    "data.num_workers=0",
    "optimizer.lr=1e-3",
]


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    return write_synthetic(path, TINY_SPLITS, class_names=TINY_CLASSES, features=TINY_FEATURES, seed=1)


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(config_name, overrides) -> the app's config, with its run directory in tmp_path."""

    def _compose(config_name: str, overrides=()):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="amir_pl.conf", version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            del cfg.hydra  # the app's own config holds no hydra node
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def run_console_script(
    name: str, *overrides: str, cwd: Path, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run an installed console script (falling back to ``python -m amir_pl.apps.<app>``) in a subprocess."""
    script = Path(sys.executable).parent / name
    command = [str(script)] if script.exists() else [sys.executable, "-m", f"amir_pl.apps.{name.split('-', 1)[1]}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*command, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def checkpoint(tiny_h5, tmp_path_factory):
    """A checkpoint trained for one epoch on the tiny synthetic file (32 mels, 0.74 s windows)."""
    from amir_pl.training.train import train

    run_dir = tmp_path_factory.mktemp("predict_train")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="amir_pl.conf", version_base="1.3"):
        cfg = compose("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    train(cfg)
    GlobalHydra.instance().clear()
    return run_dir / "checkpoints" / "last.ckpt"
