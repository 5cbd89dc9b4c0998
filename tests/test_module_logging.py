"""What AmirModule hands to Lightning's self.log at epoch ends, checked without a Trainer run."""

from types import SimpleNamespace

import pytest
import torch

from amir_pl.training import report
from amir_pl.training.module import AmirModule

CLASSES = ["drums", "flute", "piano", "violin"]
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2, 3])
PREDICTIONS = torch.tensor([0, 0, 1, 1, 2, 2, 3])


class HostCopy(torch.Tensor):
    """What ``Tensor.cpu()`` returned (and anything computed from it). On a CPU ``cpu()`` returns
    the tensor itself, so the class stands for the device: on a GPU this is a copy on the host,
    which NCCL's all_reduce (``sync_dist=True``) refuses."""


def _module(monkeypatch):
    """A module with a stand-in trainer whose ``log`` records ``(name, value, sync_dist)``."""
    module = AmirModule(
        net={"_target_": "amir_pl.training.model.SegalConvNet"},
        optimizer={"_target_": "torch.optim.Adam"},
        class_names=CLASSES,
        features={},
        input_shape=(32, 33),
    )
    module._trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[], global_step=0)
    calls = []
    monkeypatch.setattr(
        module, "log", lambda name, value, *args, sync_dist=False, **kwargs: calls.append((name, value, sync_dist))
    )
    original_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: original_cpu(self, *a, **k).as_subclass(HostCopy))
    return module, calls


def _run_epoch_ends(module, targets=TARGETS, predictions=PREDICTIONS):
    logits = torch.nn.functional.one_hot(predictions, len(CLASSES)).float()
    module.train_loss.update(torch.full((len(targets),), 0.5))
    module.train_accuracy.update(logits, targets)
    module.on_train_epoch_end()
    module.val_loss.update(torch.tensor(0.5), len(targets))
    module.val_metrics.update(logits, targets)
    module.on_validation_epoch_end()


def test_epoch_values_are_logged_on_the_module_device(monkeypatch):
    # NCCL once crashed at the first validation end: computed metrics were moved to the CPU and then
    # logged with sync_dist=True. torchmetrics' compute() has synced them; they go to log as they are.
    module, calls = _module(monkeypatch)
    _run_epoch_ends(module)
    logged = {name for name, _, _ in calls}
    assert {"train/loss", "train/top1_error", "val/loss", "val/top1_error", "val/f1_macro"} <= logged
    for name, value, sync_dist in calls:
        if sync_dist:
            assert value.device == module.device and not isinstance(value, HostCopy), (
                f"{name}: handed to log with sync_dist=True as a host copy (module on {module.device})"
            )
    host_copies = [name for name, value, _ in calls if isinstance(value, HostCopy)]
    assert not host_copies, f"logged as host copies: {host_copies}"
    # what goes into the reports is on the CPU
    assert all(value.device.type == "cpu" for value in module.results["val"].values())


def test_logged_macro_f1_averages_every_class_as_the_reports_do(monkeypatch):
    # Without the violin clip, violin is absent from targets and predictions: torchmetrics' macro
    # average would leave it out, the reports count it as 0.
    module, calls = _module(monkeypatch)
    _run_epoch_ends(module, TARGETS[:-1], PREDICTIONS[:-1])
    f1 = [2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3), 2 * (1 / 2) * (1 / 2) / 1, 2 * (1 / 2) * 1 / (1 / 2 + 1), 0.0]
    logged = {name: float(value) for name, value, _ in calls}
    assert logged["val/f1_macro"] == pytest.approx(sum(f1) / 4)
    summary = report.split_summary(module.results["val"], CLASSES)
    assert summary["f1_macro"] == pytest.approx(logged["val/f1_macro"])
    assert summary["per_class"]["violin"]["f1"] == 0.0
