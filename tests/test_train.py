import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST, TINY_CLASSES, TINY_SPLITS, run_console_script
from omegaconf import OmegaConf

from amir_pl.training.report import REPORT_FILES
from amir_pl.training.scoring import evaluate
from amir_pl.training.train import train

N_TEST = TINY_SPLITS["test"] * len(TINY_CLASSES)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_fit_learns_and_reports(compose_cfg, tiny_h5, tmp_path):
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=4"])
    summaries = train(cfg)
    test = summaries["test"]
    assert test["n"] == N_TEST
    assert test["top1_error"] < 0.4  # chance is 0.8 for 5 classes; the synthetic classes are easy
    assert _metrics(tmp_path) == json.loads(json.dumps(summaries))
    for name in REPORT_FILES:
        assert (tmp_path / name).is_file()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch") for name in checkpoints)


def test_tensorboard_has_curves_images_tables_and_hparams(compose_cfg, tiny_h5, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=2"]))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "train/loss",
        "train/top1_error",
        "val/loss",
        "val/top1_error",
        "val/f1_macro",
        "test/loss",
        "test/top1_error",
        "test/f1_macro",
    ):
        assert tag in tags["scalars"], tag
    assert len(events.Scalars("val/top1_error")) == 2  # one per epoch
    assert "val/confusion_matrix" in tags["images"] and len(events.Images("val/confusion_matrix")) == 2
    assert any(tag.startswith("val/per_class") for tag in tags["tensors"])
    hparams = OmegaConf.load(tmp_path / "tensorboard" / "hparams.yaml")
    assert hparams.optimizer.lr == 1e-3 and hparams.data.batch_size == 16


def test_no_val_split_keeps_last_checkpoint(compose_cfg, tmp_path):
    from conftest import TINY_FEATURES

    from amir_pl.dataset.schema import write_synthetic

    path = write_synthetic(
        tmp_path / "noval.h5", {"train": 4, "test": 2}, class_names=TINY_CLASSES[:3], features=TINY_FEATURES
    )
    summaries = train(compose_cfg("train", [f"data.path={path}", *FAST, "trainer.max_epochs=1"]))
    assert summaries["test"]["n"] == 6
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_console_scripts_train_then_evaluate_reproduces_test_figures(tiny_h5, tmp_path):
    train_dir, eval_dir = tmp_path / "train_run", tmp_path / "eval_run"
    result = run_console_script("amir-train", f"data.path={tiny_h5}", *FAST, f"hydra.run.dir={train_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in REPORT_FILES:
        assert (train_dir / name).is_file()
    assert list((train_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (train_dir / ".hydra" / "config.yaml").is_file()
    assert "top-1 error" in result.stdout and "tensorboard --logdir" in result.stdout
    trained = _metrics(train_dir)
    assert set(trained) == {"test"} and trained["test"]["n"] == N_TEST

    best = next((train_dir / "checkpoints").glob("epoch*.ckpt"))
    result = run_console_script(
        "amir-evaluate",
        f"ckpt_path={best}",
        f"data.path={tiny_h5}",
        f"hydra.run.dir={eval_dir}",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = _metrics(eval_dir)
    assert set(evaluated) == {"train", "val", "test"}
    assert evaluated["test"] == trained["test"]
    assert evaluated["train"]["n"] == TINY_SPLITS["train"] * len(TINY_CLASSES)
    for name in REPORT_FILES:
        assert (eval_dir / name).is_file()


def test_evaluate_refuses_mismatched_data(compose_cfg, tiny_h5, tmp_path):
    from conftest import TINY_FEATURES

    from amir_pl.core.errors import AmirError
    from amir_pl.dataset.schema import write_synthetic

    train(compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1"]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    other = write_synthetic(tmp_path / "other.h5", 2, class_names=TINY_CLASSES[::-1], features=TINY_FEATURES)
    cfg = compose_cfg("evaluate", [f"ckpt_path={ckpt}", f"data.path={other}", "data.num_workers=0"])
    with pytest.raises(AmirError, match="does not match"):
        evaluate(cfg)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    cfg = compose_cfg("evaluate", [f"ckpt_path={broken}", f"data.path={tiny_h5}", "data.num_workers=0"])
    with pytest.raises(AmirError, match="not a readable amir-pl checkpoint"):
        evaluate(cfg)


@pytest.mark.slow
def test_ddp_cpu_counts_every_test_clip_once(tiny_h5, tmp_path):
    run_dir = tmp_path / "ddp_run"
    result = run_console_script(
        "amir-train",
        f"data.path={tiny_h5}",
        "trainer=ddp_cpu",
        *FAST,
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    test = _metrics(run_dir)["test"]
    # 35 clips over 2 ranks (17 + 18): padding or duplication would make this 36
    assert test["n"] == N_TEST
    assert sum(map(sum, test["confusion_matrix"])) == N_TEST
    assert all(c["support"] == TINY_SPLITS["test"] for c in test["per_class"].values())


@pytest.mark.slow
def test_malformed_file_gets_a_clear_error_from_the_console_script(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("this is not HDF5")
    result = run_console_script("amir-train", f"data.path={bad}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"amir-train: error: {bad}: not a readable HDF5 file" in result.stderr
    assert "Traceback" not in result.stderr
    module_run = subprocess.run(
        [sys.executable, "-m", "amir_pl.apps.train", f"hydra.run.dir={tmp_path / 'run2'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert module_run.returncode == 2 and "amir-train: error: data.path is required" in module_run.stderr


@pytest.mark.parametrize("experiment", ["paper", "quickstart", "transfer", "builtin_large"])
def test_every_experiment_trains(compose_cfg, tiny_h5, experiment):
    # One short epoch of each shipped recipe, so none of them breaks unnoticed (their full runs
    # are the README's results; builtin_large's full run needs a GPU).
    cfg = compose_cfg(
        "train",
        [
            f"experiment={experiment}",
            f"data.path={tiny_h5}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "data.num_workers=0",
            "trainer.accelerator=cpu",
            "trainer.limit_train_batches=2",
            "logger=csv",
        ],
    )
    assert train(cfg)["test"]["n"] == N_TEST


def test_paper_experiment_and_overrides_compose(compose_cfg):
    cfg = compose_cfg("train", ["experiment=paper", "data.path=x.h5"])
    assert cfg.trainer.max_epochs == 30 and cfg.data.batch_size == 64 and cfg.optimizer.lr == 1e-4
    assert cfg.model.input_norm == "batch" and cfg.model.init == "thesis" and cfg.module.loss_reduction == "sum"
    assert dict(cfg.model.dropout) == {"conv1": 0.0, "conv2": 0.5, "conv3": 0.5, "conv4": 0.5, "fc": 0.5}
    cfg = compose_cfg(
        "train",
        ["data.path=data/set.h5", "model.dropout.conv2=0", "optimizer.lr=3e-4", "trainer=ddp", "trainer.devices=4"],
    )
    assert cfg.model.dropout.conv2 == 0 and cfg.optimizer.lr == 3e-4
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 4 and cfg.trainer.accelerator == "gpu"
    assert compose_cfg("train", ["data.path=x"]).trainer.accelerator == "auto"
    assert compose_cfg("train", ["data.path=x", "trainer=gpu"]).trainer.precision == "bf16-mixed"
    assert not compose_cfg("train", ["data.path=x", "trainer=ddp_cpu"]).trainer.use_distributed_sampler


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_fit(compose_cfg, tiny_h5, tmp_path):
    summaries = train(compose_cfg("train", [f"data.path={tiny_h5}", "trainer=gpu", *FAST, "data.num_workers=2"]))
    assert summaries["test"]["n"] == N_TEST
    assert summaries["test"]["top1_error"] < 0.4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_split_cached_in_device_memory(compose_cfg, tiny_h5, tmp_path, monkeypatch):
    from amir_pl.training.data import H5DataModule

    seen = []
    original = H5DataModule._cached_split

    def spy(self, split):
        cached = original(self, split)
        seen.append((split, cached.x.device.type if cached is not None else None))
        return cached

    monkeypatch.setattr(H5DataModule, "_cached_split", spy)
    summaries = train(
        compose_cfg(
            "train",
            [
                f"data.path={tiny_h5}",
                "trainer=gpu",
                *FAST,
                "data.cache=device",
                "module.channels_last=true",
                "trainer.benchmark=true",
            ],
        )
    )
    assert ("train", "cuda") in seen and ("val", "cuda") in seen
    assert summaries["test"]["n"] == N_TEST and summaries["test"]["top1_error"] < 0.4


class WriteBackend(L.Callback):
    """Writes the process group's backend into the run folder (for a test that runs a console script)."""

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
            (Path(trainer.default_root_dir) / "backend.txt").write_text(backend)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_ddp_nccl_fit_and_test(tiny_h5, tmp_path):
    # trainer=ddp on one GPU: a real NCCL process group (world size 1). Epoch-end values handed to
    # self.log as CPU copies with sync_dist=True once crashed NCCL at the first validation end;
    # gloo (trainer=ddp_cpu) accepts CPU tensors and hid it.
    run_dir = tmp_path / "ddp_gpu"
    tests = str(Path(__file__).resolve().parent)
    result = run_console_script(
        "amir-train",
        f"data.path={tiny_h5}",
        "trainer=ddp",
        "trainer.devices=1",
        *FAST,
        "trainer.max_epochs=2",
        "+callbacks.backend._target_=test_train.WriteBackend",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "backend.txt").read_text() == "nccl"
    test = _metrics(run_dir)["test"]
    assert test["n"] == N_TEST
    assert "sync_dist=True" not in result.stderr  # Lightning's advice does not apply to torchmetrics values


class _StepWindow(L.Callback):
    """Checks what runs between the end of one training step and the end of the next, after
    warm-up and within an epoch (epoch ends legitimately read metrics back). Counts checked steps."""

    checked = expected = 0  # class-wide: Hydra makes the instance

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.set_checking(False)
        if 2 <= batch_idx < trainer.num_training_batches - 1:
            type(self).checked += 1  # this step ran from start to end under the check
        if 1 <= batch_idx < trainer.num_training_batches - 2:
            self.set_checking(True)

    def on_train_epoch_end(self, trainer, pl_module):
        self.set_checking(False)
        type(self).expected += trainer.num_training_batches - 3

    def on_exception(self, trainer, pl_module, exception):
        self.set_checking(False)  # before Lightning's teardown, and before any later test

    def set_checking(self, on: bool) -> None:
        raise NotImplementedError


class FailOnGpuSync(_StepWindow):
    """Any host-GPU synchronisation in the window is an error: it idles the GPU every step."""

    def set_checking(self, on: bool) -> None:
        torch.cuda.set_sync_debug_mode("error" if on else "default")


class FailOnHostRead(_StepWindow):
    """The CPU stand-in for FailOnGpuSync: reading a tensor's value back into Python (``item``,
    ``bool``, ``tolist``, ``cpu``, ``numpy``, ``torch.unique``) is an error in the window. On a GPU
    each of these waits for the step to finish. The optimiser's step counters live on the host
    by design (torch.optim keeps them there unless ``capturable``), so torch.optim is exempt."""

    METHODS = ("item", "__bool__", "tolist", "cpu", "numpy")

    def __init__(self):
        self.originals = {name: getattr(torch.Tensor, name) for name in self.METHODS}
        self.original_unique = torch.unique

    def set_checking(self, on: bool) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, self._guard(original) if on else original)
        torch.unique = self._guard(self.original_unique) if on else self.original_unique

    @staticmethod
    def _guard(function):
        def guarded(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"torch{os.sep}optim{os.sep}" not in caller:
                raise AssertionError(
                    f"{function.__name__}() reads a tensor back to the host during a training step "
                    f"({caller}:{sys._getframe(1).f_lineno})"
                )
            return function(*args, **kwargs)

        return guarded


def test_training_steps_never_read_values_back(compose_cfg, tiny_h5):
    # A read in the step once stalled every step on an H200 (Lightning at 0.55-0.74 of the bare loop
    # at batch 64): torchmetrics' NaN check and Lightning's progress-bar copy of the step loss.
    # data.cache=memory: batches are index gathers, so reading the file (host work) is out of the window.
    FailOnHostRead.checked = FailOnHostRead.expected = 0
    train(
        compose_cfg(
            "train",
            [
                f"data.path={tiny_h5}",
                *FAST,
                "data.batch_size=8",
                "data.cache=memory",
                "trainer.log_every_n_steps=1000",
                "+callbacks.guard._target_=test_train.FailOnHostRead",
            ],
        )
    )
    assert FailOnHostRead.checked == FailOnHostRead.expected >= 3 * 7  # 10 batches an epoch, 3 epochs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cache", ["device", "none"])
def test_gpu_training_steps_never_wait_for_the_gpu(compose_cfg, tiny_h5, cache):
    FailOnGpuSync.checked = FailOnGpuSync.expected = 0
    train(
        compose_cfg(
            "train",
            [
                f"data.path={tiny_h5}",
                "trainer=gpu",
                *FAST,
                "data.batch_size=8",
                f"data.cache={cache}",
                "trainer.log_every_n_steps=1000",
                "+callbacks.guard._target_=test_train.FailOnGpuSync",
            ],
        )
    )
    assert FailOnGpuSync.checked == FailOnGpuSync.expected >= 3 * 7


@pytest.mark.slow
def test_speed_options_train_and_leave_portable_checkpoints(compose_cfg, tiny_h5, tmp_path):
    from amir_pl.training.module import AmirModule

    cfg = compose_cfg(
        "train",
        [
            f"data.path={tiny_h5}",
            *FAST,
            "trainer.max_epochs=1",
            "logger=csv",
            "module.channels_last=true",
            "module.compile=true",
            "data.cache=memory",
        ],
    )
    summaries = train(cfg)
    assert summaries["test"]["n"] == N_TEST
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # compiled in place: the plain net's keys
    model = AmirModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert not model.channels_last and not model.compile_mode  # speed options are not model hyperparameters
