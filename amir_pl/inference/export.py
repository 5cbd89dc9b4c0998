"""The trained net with its audio front end, for serving without amir-pl (amir-export).

The exported model maps mono waveforms at the checkpoint's sample rate, one
window per row (batch, clip_samples), to class scores (batch, classes): the mel
front end of amir-prepare, the ConvNet and its output function (a softmax for a
one-instrument model, a sigmoid per class for a predominant-instruments one:
``metadata.json`` says which), averaged over amir-predict's test-time warps of the mel axis where
the checkpoint was trained with pitch warping (``tta_semitones``). Resampling and
windowing stay outside; the parameters they need travel with the model as
``metadata.json`` (class names, feature parameters, the resampler's settings).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from amir_pl.core.files import atomic_write
from amir_pl.features.audio import RESAMPLING, MelFrontEnd
from amir_pl.features.params import FeatureParams, silence_gate
from amir_pl.inference.tta import tta_warps, warped_views
from amir_pl.training.augment import mel_centres
from amir_pl.training.module import class_scores, load_checkpoint

OUTPUTS = {
    "softmax": "float32 (batch, classes): softmax probabilities in class_names order (one instrument; they sum to 1)",
    "sigmoid": "float32 (batch, classes): a sigmoid probability per class in class_names order (each instrument "
    "present or not; compare each with a threshold)",
}


class WaveformClassifier(torch.nn.Module):
    """Waveform windows (batch, clip_samples) -> class scores (batch, classes); with ``tta_semitones``,
    the mean of the scores of each window's mel axis warped by each (amir-predict's test-time warps)."""

    def __init__(
        self,
        front_end: MelFrontEnd,
        net: torch.nn.Module,
        objective: str = "softmax",
        tta_semitones: tuple[float, ...] = (),
    ):
        super().__init__()
        self.front_end = front_end
        self.net = net
        self.objective = objective
        self.tta_semitones = tuple(tta_semitones)
        self.scale = front_end.features.scale
        self.register_buffer("mel_centres", mel_centres(front_end.features.as_dict()), persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        mels = self.front_end(waveforms)
        views = warped_views(mels, self.mel_centres, self.tta_semitones, self.scale)
        return torch.stack([class_scores(self.net(view), self.objective) for view in views]).mean(0)


def build(ckpt_path, rms_threshold: float | None = None, tta_semitones="auto") -> tuple[WaveformClassifier, dict]:
    module = load_checkpoint(ckpt_path)
    features = FeatureParams.from_mapping(module.hparams["features"])
    warps = tta_warps(tta_semitones, [module])
    model = WaveformClassifier(MelFrontEnd(features), module.net, module.objective, warps).eval()
    metadata = {
        "class_names": list(module.hparams["class_names"]),
        "features": features.as_dict(),
        "input": f"float32 (batch, {features.clip_samples}): mono windows at {features.sample_rate} Hz",
        "output": OUTPUTS[module.objective]
        + (f"; the mean over each window warped by {list(warps)} semitones (test-time augmentation)" if warps else ""),
        "objective": module.objective,
        "tta_semitones": list(warps),
        "resampling": {"library": "torchaudio.functional.resample", **RESAMPLING},
        "rms_threshold": silence_gate(rms_threshold, module.hparams["features"]),
        "checkpoint": str(Path(ckpt_path).resolve()),
        # Exported in float32 whatever the training precision: bf16-mixed keeps float32 weights, and a
        # float32 program runs on every server; the checkpoint's precision is recorded for reference.
        "compute": "float32",
        "trained_precision": module.trained_precision or "32-true",
    }
    return model, metadata


def export(cfg: DictConfig) -> Path:
    model, metadata = build(cfg.ckpt_path, cfg.get("rms_threshold"), cfg.tta_semitones)
    clip_samples = metadata["features"]["clip_samples"]
    example = torch.zeros(2, clip_samples)
    suffix = {"torch_export": ".pt2", "torchscript": ".ts"}
    output = Path(cfg.output or Path(cfg.paths.output_dir) / f"model{suffix[cfg.format]}")
    output.parent.mkdir(parents=True, exist_ok=True)
    extra = {"metadata.json": json.dumps(metadata, indent=2)}
    with torch.no_grad():
        if cfg.format == "torch_export":
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))

            def save_program(tmp: Path) -> None:
                with open(tmp, "wb") as f:  # a file object: torch.export warns about a name not ending .pt2
                    torch.export.save(program, f, extra_files=extra)

            atomic_write(output, save_program)
        else:
            scripted = torch.jit.trace(model, example)
            atomic_write(output, lambda tmp: torch.jit.save(scripted, str(tmp), _extra_files=extra))
    return output


def load_exported(path) -> tuple[torch.nn.Module, dict]:
    """The exported model (callable) and its metadata."""
    path = Path(path)
    extra = {"metadata.json": ""}
    if path.suffix == ".pt2":
        program = torch.export.load(str(path), extra_files=extra)
        return program.module(), json.loads(extra["metadata.json"])
    model = torch.jit.load(str(path), _extra_files=extra)
    return model, json.loads(extra["metadata.json"])
