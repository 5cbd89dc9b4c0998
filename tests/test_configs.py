"""Every app's config composes from the packaged configs, and its nodes build what the library takes."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from amir_pl.core.labels import CLASS_NAMES
from amir_pl.features.params import FeatureParams
from amir_pl.training.model import SegalConvNet

APPS = ["train", "evaluate", "evaluate_recordings", "prepare", "synth", "baseline", "predict", "export", "bench"]


@pytest.mark.parametrize("name", APPS)
def test_every_app_config_composes_and_resolves(compose_cfg, name):
    cfg = compose_cfg(name)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert plain["task_name"] == name


def test_the_features_node_builds_the_thesis_parameters_by_default(compose_cfg):
    assert instantiate(compose_cfg("prepare").features) == FeatureParams()


def test_feature_options_are_set_in_seconds_and_checked_by_the_schema(compose_cfg):
    cfg = compose_cfg("prepare", ["features.clip_seconds=0.75", "features.n_mels=32", "features.scale=db"])
    features = instantiate(cfg.features)
    assert (features.clip_samples, features.n_mels, features.scale, features.f_max) == (16538, 32, "db", 11025.0)
    with pytest.raises(ConfigCompositionException) as refused:
        compose_cfg("prepare", ["features.scale=loud"])
    assert "features.scale" in str(refused.value.__cause__) and "power" in str(refused.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose_cfg("prepare", ["features.n_mels=many"])


@pytest.mark.parametrize("name", ["prepare", "synth"])
def test_the_class_list_comes_from_labels(compose_cfg, name):
    assert list(compose_cfg(name).classes) == list(CLASS_NAMES)
    assert list(compose_cfg(name, ["classes=[piano,gac]"]).classes) == ["piano", "gac"]


@pytest.mark.parametrize("model", ["paper", "paper_as_run"])
def test_model_configs_build_the_net(model):
    with initialize_config_module(config_module="amir_pl.conf", version_base="1.3"):
        cfg = compose("train", [f"model={model}", "data.path=unused.h5"])
    net = instantiate(cfg.model, num_classes=12, input_shape=(128, 130))
    assert isinstance(net, SegalConvNet)
    assert net(torch.zeros(2, 1, 128, 130)).shape == (2, 12)


@pytest.mark.parametrize(
    ("name", "override", "choices"),
    [
        ("prepare", "dtype=float8", "float16, float32"),
        ("synth", "renderer=magic", "auto, fluidsynth, tinysoundfont"),
        ("predict", "aggregation=max", "mean, vote, han"),
        ("export", "format=onnx", "torch_export, torchscript"),
        ("evaluate_recordings", "unknown_labels=keep", "drop, skip"),
        ("evaluate_recordings", "aggregation=max", "mean, vote, han"),
        ("baseline", "classifier=knn", "svm, logreg"),
        ("prepare", "num_workers=two", "Integer"),
    ],
)
def test_app_options_are_checked_while_composing(compose_cfg, name, override, choices):
    with pytest.raises(ConfigCompositionException) as refused:
        compose_cfg(name, [override])
    message = str(refused.value.__cause__)
    assert override.split("=")[0] in message and choices in message


@pytest.mark.parametrize("layout", ["soundfonts", "families", "families_generaluser", "pool"])
def test_every_family_a_layout_names_has_a_source_amir_synth_loads_by_default(compose_cfg, layout):
    cfg = compose_cfg("synth", [f"layout={layout}"])
    families = {source.family for source in cfg.sources.values()}
    named = {family for split in cfg.splits.values() for family in split.families}
    assert named and named <= families, f"layout={layout} names {sorted(named - families)}: no source in synth.yaml"
