"""The schemas of amir-predict's, amir-evaluate-recordings' and amir-export's configs: types and
choices, checked by OmegaConf while Hydra composes. The values and their comments are in
conf/predict.yaml, conf/evaluate_recordings.yaml and conf/export.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class Aggregation(StrEnum):
    mean = "mean"  # the mean of the window scores (softmax or sigmoid)
    vote = "vote"  # the share of windows whose top class it is
    han = "han"  # the sum of the window scores divided by its maximum (Han et al., 2016)


@dataclass
class PredictConfig:
    task_name: str = MISSING
    ckpt_path: Any = MISSING  # a checkpoint, or a list of them (their scores averaged)
    inputs: Any = MISSING  # a file or folder, or a list of them
    hop_seconds: float = MISSING
    tta_semitones: Any = MISSING  # auto (from the checkpoint's training pitch warps) | a list of semitones | []
    aggregation: Aggregation = MISSING
    top_k: int = MISSING
    timeline: bool = MISSING
    rms_threshold: float | None = MISSING
    batch_size: Any = MISSING  # a number of windows, or "auto"
    num_workers: int = MISSING
    windows_per_task: int = MISSING
    device: str = MISSING  # auto | cpu | cuda | cuda:<index>
    precision: str | None = MISSING  # null: the checkpoint's
    progress: bool = MISSING
    paths: Any = MISSING


class UnknownLabels(StrEnum):
    drop = "drop"  # the label is dropped; a file left without labels is skipped
    skip = "skip"  # the file is skipped


@dataclass
class EvaluateRecordingsConfig:
    task_name: str = MISSING
    ckpt_path: Any = MISSING  # a checkpoint, or a list of them (their scores averaged)
    inputs: Any = MISSING  # labelled recordings: folders, audio files with .txt beside, manifest CSVs
    val_inputs: Any = MISSING  # null, or a validation list in the same forms
    unknown_labels: UnknownLabels = MISSING
    eval_classes: Any = MISSING  # model | irmas | a list of classes
    aggregation: Aggregation = MISSING
    threshold: Any = MISSING  # a number in (0, 1), or "val"
    sweep_thresholds: list[float] = MISSING
    hop_seconds: float = MISSING
    tta_semitones: Any = MISSING  # auto (from the checkpoint's training pitch warps) | a list of semitones | []
    rms_threshold: float | None = MISSING
    batch_size: Any = MISSING
    num_workers: int = MISSING
    windows_per_task: int = MISSING
    device: str = MISSING
    precision: str | None = MISSING
    progress: bool = MISSING
    tensorboard: bool = MISSING
    bootstrap: int = MISSING  # resamples of the files for an interval of micro F1 and LRAP; 0: none
    seed: int = MISSING
    paths: Any = MISSING


class ExportFormat(StrEnum):
    torch_export = "torch_export"  # .pt2, torch.export
    torchscript = "torchscript"  # .ts, traced


@dataclass
class ExportConfig:
    task_name: str = MISSING
    ckpt_path: str = MISSING
    format: ExportFormat = MISSING
    output: str | None = MISSING
    rms_threshold: float | None = MISSING
    tta_semitones: Any = MISSING  # auto (from the checkpoint's training pitch warps) | a list of semitones | []
    paths: Any = MISSING
