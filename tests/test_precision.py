"""trainer.precision=auto: bf16-mixed where the CPU computes bf16 natively, float32 elsewhere; detected,
forced, logged, carried in the checkpoint and followed by the apps that score it."""

import logging

import numpy as np
import pytest
import torch
from conftest import FAST
from omegaconf import OmegaConf
from test_prepare import write_tone

import amir_pl.training.precision as precision_module
from amir_pl.features.audio import MelFrontEnd, probe, read_clips
from amir_pl.features.params import FeatureParams
from amir_pl.inference.export import export, load_exported
from amir_pl.inference.predict import load_scorer, predict
from amir_pl.training.module import load_checkpoint
from amir_pl.training.precision import cpu_bf16_features, resolve_precision
from amir_pl.training.train import train

NATIVE = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: ["AVX512_BF16"])


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: [])


def test_detection_reads_what_pytorch_sees_of_this_cpu():
    features = cpu_bf16_features()
    assert set(features) <= {"AVX512_BF16", "AMX"}
    assert bool(features) == NATIVE


def test_auto_is_bf16_on_a_cpu_with_native_bf16_and_float32_without(cpu_with_bf16, monkeypatch):
    precision, why = resolve_precision("auto", "cpu")
    assert precision == "bf16-mixed" and "AVX512_BF16" in why
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: [])
    precision, why = resolve_precision("auto", "cpu")
    assert precision == "32-true" and "no native bf16" in why


def test_a_forced_precision_is_kept_and_emulated_bf16_is_warned_about(cpu_without_bf16, caplog):
    assert resolve_precision("32-true", "cpu")[0] == "32-true"
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16-mixed", "cpu")[0] == "bf16-mixed"
    assert "emulates" in caplog.text and "trainer.precision=32-true" in caplog.text


def test_configs_auto_by_default_and_for_predominant_float32_for_the_thesis_and_transfer_recipes(compose_cfg):
    assert compose_cfg("train", ["data.path=x"]).trainer.precision == "auto"
    assert compose_cfg("train", ["data.path=x", "trainer=cpu"]).trainer.precision == "auto"
    # experiment=transfer: float32, chosen on validation (bf16 was worse, docs/results.md)
    assert compose_cfg("train", ["data.path=x", "experiment=transfer"]).trainer.precision == "32-true"
    assert (
        compose_cfg("train", ["data.path=x", "experiment=transfer", "trainer.precision=auto"]).trainer.precision
        == "auto"
    )
    # experiment=paper computes the thesis recipe as the thesis did, in float32, on any device
    assert compose_cfg("train", ["data.path=x", "experiment=paper"]).trainer.precision == "32-true"
    assert compose_cfg("train", ["data.path=x", "trainer=gpu", "experiment=paper"]).trainer.precision == "32-true"
    assert compose_cfg("train", ["data.path=x", "experiment=quickstart"]).trainer.precision == "32-true"
    # experiment=predominant (make quickstart): auto, bf16 tied or better on validation with two seeds
    assert compose_cfg("train", ["data.path=x", "experiment=predominant"]).trainer.precision == "auto"


def _train(compose_cfg, tiny_h5, *overrides):
    cfg = compose_cfg(
        "train",
        [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "trainer=cpu", "logger=tensorboard", *overrides],
    )
    summaries = train(cfg)
    return cfg, summaries


@pytest.mark.parametrize("detected", [True, False])
def test_training_follows_the_detection_logs_it_and_the_checkpoint_carries_it(
    compose_cfg, tiny_h5, tmp_path, monkeypatch, caplog, detected
):
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: ["AMX"] if detected else [])
    expected = "bf16-mixed" if detected else "32-true"
    with caplog.at_level(logging.INFO):
        _train(compose_cfg, tiny_h5, "trainer.precision=auto")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision ")]
    assert len(lines) == 1 and lines[0].startswith(f"precision {expected} (auto")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["amir_precision"] == expected
    assert OmegaConf.load(tmp_path / "tensorboard" / "hparams.yaml").trainer.precision == expected


def test_an_override_forces_float32_on_a_cpu_with_bf16(compose_cfg, tiny_h5, tmp_path, cpu_with_bf16):
    _train(compose_cfg, tiny_h5, "trainer.precision=32-true")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["amir_precision"] == "32-true"


@pytest.fixture(scope="module")
def tone(tmp_path_factory):
    return write_tone(tmp_path_factory.mktemp("tone") / "tone.wav", 4.0, 22050, 440.0)


def test_predict_and_export_follow_the_checkpoints_precision(compose_cfg, tiny_h5, tmp_path, tone):
    _train(compose_cfg, tiny_h5, "trainer.precision=bf16-mixed")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    module = load_checkpoint(ckpt).eval()
    features = FeatureParams.from_mapping(module.hparams["features"])
    clips = torch.cat([b.clips for b in read_clips(probe(tone), features, hop_samples=round(1.5 * 22050))])
    mels = MelFrontEnd(features)(clips)
    with torch.no_grad():
        fp32 = torch.softmax(module.net(mels), dim=1).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.softmax(module.net(mels).float(), dim=1).numpy()  # the net in bf16, its softmax in float32
    # the two precisions are told apart well above predictions.json's 4 decimals
    assert np.abs(fp32 - bf16).max() > 1e-3, np.abs(fp32 - bf16).max()

    def window_probabilities(*overrides):
        cfg = compose_cfg(
            "predict", [f"ckpt_path={ckpt}", f"inputs={tone}", "num_workers=0", "timeline=true", *overrides]
        )
        return np.array(predict(cfg)[0]["window_probabilities"])

    np.testing.assert_allclose(window_probabilities(), bf16, atol=2e-4)  # null: the checkpoint's bf16-mixed
    np.testing.assert_allclose(window_probabilities("precision=32-true"), fp32, atol=2e-4)
    recordings_cfg = compose_cfg("evaluate_recordings", [f"ckpt_path={ckpt}", f"inputs={tone}"])
    assert load_scorer(recordings_cfg).precision == "bf16-mixed"  # amir-evaluate-recordings shares the scorer

    path = export(compose_cfg("export", [f"ckpt_path={ckpt}", "format=torchscript"]))
    model, metadata = load_exported(path)
    assert metadata["compute"] == "float32" and metadata["trained_precision"] == "bf16-mixed"
    with torch.no_grad():
        torch.testing.assert_close(model(clips), torch.from_numpy(fp32), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AVX512_BF16 or AMX)")
def test_trainer_cpu_trains_in_bf16_on_this_cpu(compose_cfg, tiny_h5, tmp_path):
    _train(compose_cfg, tiny_h5, "trainer.precision=auto")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["amir_precision"] == "bf16-mixed"


def test_scoring_follows_the_checkpoint_unless_its_bf16_would_be_emulated(cpu_without_bf16):
    from amir_pl.core.errors import AmirError
    from amir_pl.training.precision import scoring_precision

    assert scoring_precision(None, "bf16-mixed", "cpu")[0] == "32-true"  # emulated bf16: float32 instead
    assert scoring_precision(None, "32-true", "cpu")[0] == "32-true"
    assert scoring_precision("bf16-mixed", "32-true", "cpu")[0] == "bf16-mixed"  # asked for: kept
    with pytest.raises(AmirError, match="precision=bf16: use one of"):
        scoring_precision("bf16", None, "cpu")


def test_scoring_a_bf16_checkpoint_on_a_cpu_with_bf16_runs_bf16(cpu_with_bf16):
    from amir_pl.training.precision import scoring_precision

    assert scoring_precision(None, "bf16-mixed", "cpu") == ("bf16-mixed", "the checkpoint's")
    assert scoring_precision(None, None, "cpu")[0] == "32-true"  # older checkpoints do not say


def test_null_and_a_gpu_without_cuda_resolve_without_asking_the_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision(None, "cpu")[0] == "32-true"
    assert resolve_precision("auto", "gpu")[0] == "32-true"  # Lightning then says there is no GPU
