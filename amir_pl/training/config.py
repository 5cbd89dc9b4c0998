"""The schema of amir-baseline's config: types and choices, checked by OmegaConf while Hydra
composes. The values and their comments are in conf/baseline.yaml. (amir-train's and
amir-evaluate's nodes are ``_target_`` nodes: the classes they build check their arguments.)"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class Classifier(StrEnum):
    svm = "svm"  # RBF kernel
    logreg = "logreg"


@dataclass
class BaselineData:
    path: str = MISSING


@dataclass
class BaselineConfig:
    task_name: str = MISSING
    data: BaselineData = MISSING
    test_splits: list[str] = MISSING
    also_evaluate: list[str] = MISSING
    classifier: Classifier = MISSING
    C: float = MISSING
    n_mfcc: int = MISSING
    seed: int = MISSING
    paths: Any = MISSING
