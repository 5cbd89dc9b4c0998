"""Training refuses what cannot work: a batch size below 1 (one line, no traceback), and a loss that is
not finite (the run stops at that step, naming it and what to check, and keeps the checkpoints from
before it)."""

import h5py
import numpy as np
import pytest
import torch
from conftest import FAST, TINY_CLASSES, TINY_FEATURES, run_console_script

from amir_pl.core.errors import AmirError
from amir_pl.dataset.schema import write_synthetic
from amir_pl.training.data import H5DataModule
from amir_pl.training.fault_tolerance import NonFiniteLoss
from amir_pl.training.train import train


@pytest.mark.parametrize("option", ["data.batch_size", "data.eval_batch_size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_batch_size_below_one_is_refused_naming_the_option(tiny_h5, option, value):
    with pytest.raises(AmirError, match=rf"^{option}={value}: must be a whole number of clips >= 1"):
        H5DataModule(str(tiny_h5), **{option.removeprefix("data."): int(value)})


@pytest.mark.slow
def test_the_console_script_says_it_in_one_line(tiny_h5, tmp_path):
    result = run_console_script(
        "amir-train", f"data.path={tiny_h5}", *FAST, "data.batch_size=0", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("amir-train: error: data.batch_size=0: must be")
    assert "Traceback" not in result.stderr


def _file_with_nan_rows(path, rows):
    """A tiny dataset file whose training rows ``rows`` hold NaN features (another tool's bad output)."""
    write_synthetic(path, {"train": 16, "val": 3}, class_names=TINY_CLASSES, features=TINY_FEATURES, seed=1)
    with h5py.File(path, "r+") as f:
        for row in rows:
            f["train/x"][row] = np.nan
    return path


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nan_features_stop_training_at_that_step_and_keep_the_checkpoints_before_it(compose_cfg, tmp_path, precision):
    # One bad row among 80, one clip a batch, a checkpoint after every step: the bad clip comes at a
    # seeded position after some good steps, whose checkpoints must survive it.
    data = _file_with_nan_rows(tmp_path / "nan.h5", rows=[37])
    cfg = compose_cfg(
        "train",
        [
            f"data.path={data}",
            *FAST,
            "data.batch_size=1",
            "trainer.max_epochs=2",
            f"trainer.precision={precision}",
            "callbacks.last_checkpoint.every_n_train_steps=1",
        ],
    )
    with pytest.raises(NonFiniteLoss) as stopped:
        train(cfg)
    message = str(stopped.value)
    step = int(message.split("at step ")[1].split(" ")[0])
    assert 0 < step < 80, message  # in the first epoch, not its first step (the seed puts it there)
    assert "(epoch 0)" in message
    assert f"rows of data.path={data} are bad" in message  # the batch's features were looked at
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"kept from before it: {last}" in message
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == step  # saved after the last good step, nothing after it
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
    assert not list((tmp_path / "checkpoints").glob("epoch*.ckpt"))  # no "best" checkpoint of NaN weights
    assert not (tmp_path / "metrics.json").exists()


def test_a_finite_run_with_the_check_trains_to_the_end(compose_cfg, tiny_h5, tmp_path):
    summaries = train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1"]))
    assert summaries["test"]["n"] > 0


def test_a_non_finite_loss_without_bad_features_names_the_rate_and_the_precision(compose_cfg, tiny_h5, tmp_path):
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "optimizer.lr=1e30", "trainer.max_epochs=3"])
    with pytest.raises(NonFiniteLoss, match=r"optimizer\.lr=.*trainer\.precision=32-true"):
        train(cfg)
