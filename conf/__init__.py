"""The Hydra configs, shipped in the wheel as the package ``amir_pl.conf`` (read as pkg://amir_pl.conf).

Importing it (Hydra does, to read it) registers the structured schemas that the YAML files extend:
types and choices are checked while a config is composed.
"""

from hydra.core.config_store import ConfigStore

from amir_pl.core import labels  # noqa: F401  (registers the ${amir.classes:} resolver)
from amir_pl.dataset.config import PrepareConfig, SynthConfig
from amir_pl.features.params import FeatureConfig
from amir_pl.inference.config import EvaluateRecordingsConfig, ExportConfig, PredictConfig
from amir_pl.training.config import BaselineConfig

_store = ConfigStore.instance()
_store.store(group="features", name="schema", node=FeatureConfig)
for _name, _schema in {
    "prepare": PrepareConfig,
    "synth": SynthConfig,
    "predict": PredictConfig,
    "evaluate_recordings": EvaluateRecordingsConfig,
    "export": ExportConfig,
    "baseline": BaselineConfig,
}.items():
    _store.store(name=f"{_name}_schema", node=_schema)
