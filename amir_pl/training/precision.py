"""The arithmetic a run trains and scores in: ``trainer.precision=auto`` is ``bf16-mixed`` where the device
computes bfloat16 natively and ``32-true`` elsewhere (docs/performance.md, "bf16 on a CPU").

On a CPU with AVX512_BF16 or AMX, bf16 autocast (weights stay float32) trains the ConvNet about twice
as fast as float32; without them PyTorch emulates bf16, which is slower than float32, so ``auto`` keeps
float32 there. The choice is detected, never guessed from the CPU's name.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from amir_pl.core.errors import AmirError

log = logging.getLogger(__name__)

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"
# What PyTorch's CPU kernels (oneDNN) use for bf16 convolutions and matrix products: name -> torch.cpu probe.
CPU_BF16_FEATURES = {"AVX512_BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}


def cpu_bf16_features() -> list[str]:
    """The instruction sets of this CPU that compute bf16 natively, as PyTorch detects them (may be empty)."""
    found = []
    for name, probe in CPU_BF16_FEATURES.items():
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            found.append(name)
    return found


def _device_type(accelerator) -> str:
    """``cpu`` or ``cuda`` (or another accelerator's name) for a Trainer's ``accelerator`` option."""
    name = str(accelerator or AUTO).lower()
    if name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name == "gpu" else name


def is_bf16(precision) -> bool:
    return str(precision).startswith("bf16")


def resolve_precision(requested, accelerator) -> tuple[str, str]:
    """``(precision, why)`` for ``trainer.precision=requested`` on ``trainer.accelerator=accelerator``.

    ``auto``: bf16-mixed on a CPU with native bf16 or a CUDA GPU with bf16, else 32-true. Any other
    value is Lightning's and is kept (a forced bf16 on a CPU without native bf16 gets a warning).
    """
    device = _device_type(accelerator)
    if requested is None:
        return FP32, "trainer.precision=null: Lightning's default"
    if str(requested).lower() != AUTO:
        if device == "cpu" and is_bf16(requested) and not cpu_bf16_features():
            log.warning(
                "trainer.precision=%s on a CPU without native bf16 (no AVX512_BF16 or AMX): PyTorch emulates it, "
                "slower than trainer.precision=32-true",
                requested,
            )
        return str(requested), "asked for"
    if device == "cpu":
        features = cpu_bf16_features()
        if features:
            return BF16, f"auto: this CPU computes bf16 natively: {', '.join(features)}"
        return FP32, "auto: this CPU has no native bf16 (no AVX512_BF16 or AMX)"
    if device == "cuda":
        if not torch.cuda.is_available():  # trainer.accelerator=gpu without one: Lightning says so
            return FP32, "auto: no CUDA GPU to ask"
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return BF16, f"auto: {torch.cuda.get_device_name()} computes bf16"
        return FP32, f"auto: {torch.cuda.get_device_name()} has no bf16"
    if device in ("mps", "tpu", "xla"):
        return FP32, f"auto: float32 on {device}"
    raise AmirError(f"trainer.accelerator={accelerator}: unknown; use auto, cpu or gpu")


def log_precision(precision: str, why: str) -> None:
    """One line: which precision and why, and the override that forces the other one."""
    other = FP32 if is_bf16(precision) else BF16
    log.info("precision %s (%s); trainer.precision=%s forces the other", precision, why, other)


SCORING_PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed")


def scoring_precision(requested, trained: str | None, accelerator="auto") -> tuple[str, str]:
    """``(precision, why)`` for scoring a checkpoint: ``requested`` if given (``auto`` as in training), else
    the precision it was trained in (a bf16-mixed run's figures are reproduced), else 32-true (older
    checkpoints do not say)."""
    if requested:
        if str(requested) not in SCORING_PRECISIONS:
            raise AmirError(
                f"precision={requested}: use one of {', '.join(SCORING_PRECISIONS)}, or null (the checkpoint's)"
            )
        return resolve_precision(requested, accelerator)
    if not trained:
        return FP32, "the checkpoint does not say"
    if is_bf16(trained) and _device_type(accelerator) == "cpu" and not cpu_bf16_features():
        # emulated bf16 would be slower than float32 here, and float32 is at least as exact
        return FP32, f"the checkpoint's {trained} would be emulated on this CPU (no AVX512_BF16 or AMX)"
    return str(trained), "the checkpoint's"


def autocast(device: torch.device, precision: str | None):
    """The context Lightning's mixed precision runs the forward pass in (its ``MixedPrecision`` plugin;
    ``16-mixed`` on a CPU as bf16, as Lightning's Trainer runs it); no change for any other precision."""
    text = str(precision)
    if not text.endswith("-mixed"):
        return contextlib.nullcontext()
    return MixedPrecision("bf16-mixed" if device.type == "cpu" else text, device.type).forward_context()
