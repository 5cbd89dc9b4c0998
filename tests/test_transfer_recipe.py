"""The transfer recipe: log compression and per-band normalisation in the net (statistics of the
training split, carried by the checkpoint to evaluate, predict and export), batch augmentation
(shape, determinism under a seed, each option), and experiment=paper untouched."""

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FAST, TINY_CLASSES, TINY_FEATURES
from omegaconf import OmegaConf
from test_prepare import write_tone

from amir_pl.core.errors import AmirError
from amir_pl.dataset.schema import write_synthetic
from amir_pl.features.audio import MelFrontEnd
from amir_pl.features.params import FeatureParams
from amir_pl.inference.export import export, load_exported
from amir_pl.inference.predict import predict
from amir_pl.training.augment import BatchAugment, mel_centres
from amir_pl.training.model import BandNorm
from amir_pl.training.module import AmirModule, load_checkpoint
from amir_pl.training.scoring import evaluate, score_splits
from amir_pl.training.train import train

FEATURES = {**TINY_FEATURES.as_dict()}
OPTIONS = {
    "gain_db": {"gain_db": 6.0},
    "eq_db": {"eq_db": 9.0},
    "time_shift": {"time_shift": 0.5},
    "time_stretch": {"time_stretch": 0.25},
    "lowpass": {"lowpass_p": 1.0, "lowpass_min_hz": 1000.0},
    "pitch": {"pitch_semitones": 2.0},
    "mixstyle": {"mixstyle_p": 1.0},
    "mixup": {"mixup_alpha": 0.3},
    "masks": {"freq_masks": 2, "freq_mask_width": 6, "time_masks": 2, "time_mask_width": 6},
}


def _batch(scale="power", seed=0):
    g = torch.Generator().manual_seed(seed)
    power = torch.rand((8, 32, 33), generator=g) ** 4 + 1e-6
    x = power if scale == "power" else 10 * torch.log10(power)
    return x, torch.arange(8) % len(TINY_CLASSES)


def _augment(scale="power", **options):
    return BatchAugment(scale, FEATURES, len(TINY_CLASSES), **options)


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("scale", ["power", "db"])
def test_each_augmentation_keeps_the_shape_changes_the_batch_and_repeats_under_a_seed(name, scale):
    augment = _augment(scale, **OPTIONS[name])
    x, y = _batch(scale)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(augment(x.clone(), y))
    (first, target), (again, target_again), (other, _) = runs
    assert first.shape == x.shape and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert not torch.allclose(first, x)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(target, target_again)
    assert not torch.allclose(first, other)
    if scale == "power":
        assert (first >= 0).all()
    if name == "mixup":
        assert target.shape == (8, len(TINY_CLASSES)) and torch.allclose(target.sum(1), torch.ones(8))
        assert (target.max(1).values >= 0.5).all() and (target.argmax(1) == y).all()  # the clip keeps the larger share
    else:
        assert torch.equal(target, y)


def test_gain_moves_each_clip_by_one_level_within_its_bound():
    x, y = _batch("power")
    out, _ = _augment("power", gain_db=6.0)(x, y)
    ratio_db = 10 * torch.log10(out / x)
    per_clip = ratio_db.flatten(1)
    assert torch.allclose(per_clip, per_clip[:, :1].expand_as(per_clip), atol=1e-3)
    assert per_clip.abs().max() <= 6.0 + 1e-3 and per_clip[:, 0].std() > 0.5


def test_pitch_shift_moves_a_partial_to_the_band_a_few_semitones_away(monkeypatch):
    centres = mel_centres(FEATURES)
    band = 20
    db = torch.full((1, 32, 33), -60.0)
    db[0, band] = 0.0
    augment = _augment("db", pitch_semitones=4.0)
    monkeypatch.setattr(augment, "_uniform", lambda shape, bound, device: torch.full(shape, 4.0))
    out, _ = augment(db, torch.tensor([0]))
    moved = int(out[0, :, 0].argmax())
    wanted = centres[band] * 2 ** (4 / 12)
    assert moved > band and abs(float(centres[moved]) - float(wanted)) <= float(centres[moved + 1] - centres[moved])


def test_time_stretch_moves_an_onset_by_the_drawn_rate_and_keeps_the_bands(monkeypatch):
    db = torch.full((2, 32, 33), -60.0)
    db[:, 5, 12] = 0.0  # one onset at frame 12, band 5
    augment = _augment("db", time_stretch=1.0)
    rates = torch.tensor([[2.0], [0.5]])  # frames of the clip read per frame out: twice as fast, twice as slow
    bounds = []
    monkeypatch.setattr(augment, "_uniform", lambda shape, bound, device: bounds.append(bound) or torch.log(rates))
    out, _ = augment(db, torch.tensor([0, 0]))
    assert bounds == [pytest.approx(math.log(2.0))]  # time_stretch=1: rates log-uniform in [1/2, 2]
    # rate 2 reads frame 12 at output frame 6 (twice as fast); rate 0.5 reads it at frame 24 (twice as slow)
    assert int(out[0, 5].argmax()) == 6 and int(out[1, 5].argmax()) == 24
    assert (out[:, [0, 1, 2, 3, 4, 6, 7]] == -60.0).all()  # no other band gains anything
    with pytest.raises(AmirError, match="time_stretch"):
        _augment("db", time_stretch=-0.1)


def test_lowpass_cuts_the_bands_above_the_drawn_cutoff_by_its_slope_and_keeps_the_floor(monkeypatch):
    centres = mel_centres(FEATURES)
    db = torch.zeros((1, 32, 33))
    db[0, 0, 0] = -50.0  # the clip's floor
    augment = _augment("db", lowpass_p=1.0, lowpass_min_hz=2000.0)
    cutoff = math.sqrt(float(centres[20] * centres[21]))  # between two bands, so rounding cannot move it across one
    monkeypatch.setattr(torch, "rand", lambda shape, device=None: torch.zeros(shape))  # the lowest cutoff; chosen
    monkeypatch.setattr(augment, "lowpass_min_hz", cutoff)
    out, _ = augment(db, torch.tensor([0]))
    wanted = -60.0 * torch.log2(centres / cutoff).clamp_min(0)
    torch.testing.assert_close(out[0, :, 5], wanted.clamp_min(-50.0), atol=1e-3, rtol=0)  # the cutoff via exp(log)
    assert (out[0, :21, 5] == 0).all() and out[0, 21, 5] < 0 and out.min() == -50.0
    for bad in ({"lowpass_p": 1.5}, {"lowpass_p": 0.5, "lowpass_min_hz": 0.0}, {"lowpass_min_hz": 1e6}):
        with pytest.raises(AmirError, match="lowpass_min_hz"):
            _augment("db", **{"lowpass_p": 0.5, **bad})


def test_options_at_zero_are_never_applied(monkeypatch):
    """Off means off: the recipes' yaml (the new options at 0) never call them, so older runs repeat exactly."""
    for name in ("transfer", "full"):
        options = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / f"conf/augment/{name}.yaml"))
        del options["_target_"]
        augment = _augment("db", **options)
        for method in ("_lowpass", "_time_stretch"):
            monkeypatch.setattr(augment, method, lambda db, method=method: pytest.fail(f"{method} ran while off"))
        x, y = _batch("db")
        augment(x, y)


def test_experiment_paper_keeps_the_thesis_input_and_no_augmentation(compose_cfg, tiny_h5):
    paper = compose_cfg("train", [f"data.path={tiny_h5}", "experiment=paper"])
    assert not paper.augment and paper.model.compression == "none" and paper.model.input_norm == "batch"
    transfer = compose_cfg("train", [f"data.path={tiny_h5}", "experiment=transfer"])
    assert transfer.augment._target_.endswith("BatchAugment")
    assert transfer.model.compression == "db" and transfer.model.input_norm == "band"
    assert dict(transfer.model.dropout) == {"conv1": 0.0, "conv2": 0.25, "conv3": 0.25, "conv4": 0.25, "fc": 0.5}
    assert dict(paper.model.dropout) == {"conv1": 0.0, "conv2": 0.5, "conv3": 0.5, "conv4": 0.5, "fc": 0.5}
    module = AmirModule(paper.model, paper.optimizer, TINY_CLASSES, FEATURES, (32, 33), augment=paper.augment or None)
    assert module.augment is None and isinstance(module.net.compress, torch.nn.Identity)


def test_compression_db_on_a_decibel_dataset_is_refused():
    with pytest.raises(AmirError, match="model.compression=db on a dataset already in decibels"):
        AmirModule(
            {"_target_": "amir_pl.training.model.SegalConvNet", "compression": "db"},
            {"_target_": "torch.optim.Adam"},
            TINY_CLASSES,
            {**FEATURES, "scale": "db"},
            (32, 33),
        )


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_band_statistics_travel_in_the_checkpoint_and_evaluate_predict_export_agree(compose_cfg, tmp_path, fmt):
    data = write_synthetic(
        tmp_path / "band.h5",
        {"train": 24, "val": 5, "test": 7},
        class_names=TINY_CLASSES,
        features=TINY_FEATURES,
        seed=3,
    )
    overrides = [f"data.path={data}", *FAST, "trainer.max_epochs=1", "logger=csv"]
    cfg = compose_cfg("train", [*overrides, "model.compression=db", "model.input_norm=band", "augment=full"])
    summaries = train(cfg)
    ckpt = next((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    module = load_checkpoint(ckpt).eval()
    assert isinstance(module.net.norm, BandNorm) and module.hparams["augment"]["_target_"].endswith("BatchAugment")
    with h5py.File(data, "r") as f:
        expected = 10 * np.log10(np.maximum(f["train"]["x"][()].astype(np.float64), 1e-10))
    torch.testing.assert_close(
        module.net.norm.mean, torch.from_numpy(expected.mean(axis=(0, 2))).float(), atol=1e-3, rtol=1e-4
    )
    torch.testing.assert_close(
        module.net.norm.std, torch.from_numpy(expected.std(axis=(0, 2), ddof=1)).float(), atol=1e-3, rtol=1e-3
    )

    evaluated = evaluate(compose_cfg("evaluate", [f"ckpt_path={ckpt}", f"data.path={data}", "splits=[test]"]))
    assert evaluated["test"]["confusion_matrix"] == summaries["test"]["confusion_matrix"]
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["top1_error"] == evaluated["test"]["top1_error"]

    features = FeatureParams.from_mapping(module.hparams["features"])
    wav = write_tone(tmp_path / "tone.wav", features.clip_samples / features.sample_rate, features.sample_rate, 440.0)
    # the net's own scores: augment=full warps pitch, so amir-predict and amir-export would average warps
    (row,) = predict(
        compose_cfg("predict", [f"ckpt_path={ckpt}", f"inputs={wav}", "num_workers=1", "tta_semitones=[]"])
    )
    waveform = torch.from_numpy(sf.read(str(wav), dtype="float32")[0])[None]
    with torch.no_grad():
        direct = torch.softmax(module.net(MelFrontEnd(features)(waveform)), dim=1)[0]
    assert row["top1"] == TINY_CLASSES[int(direct.argmax())]
    assert row["top1_score"] == pytest.approx(float(direct.max()), abs=1e-4)
    model, _ = load_exported(export(compose_cfg("export", [f"ckpt_path={ckpt}", f"format={fmt}", "tta_semitones=[]"])))
    with torch.no_grad():
        torch.testing.assert_close(model(waveform)[0], direct, atol=1e-5, rtol=1e-4)


def load_transfer_table():
    """scripts/transfer_table.py, which make transfer runs (a script, not a module of the package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "transfer_table", Path(__file__).parents[1] / "scripts/transfer_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_leave_one_family_out_table_reads_the_newest_runs_and_averages(tmp_path):
    module = load_transfer_table()

    def write(task, value, stamp="2026-02-01_00-00-00"):
        run = tmp_path / task / stamp
        run.mkdir(parents=True)
        metrics = {"test": {"top1_error": value, "f1_macro": 1 - value, "n": 100}}
        (run / "metrics.json").write_text(json.dumps(metrics))

    # ConvNet recipes: one run per seed (an older run of each, which the table must not read); the baseline once
    for family, (transfer, paper, baseline) in {
        "tim": ((0.3, 0.4), (0.5, 0.5), 0.6),
        "lmms": ((0.5, 0.6), (0.7, 0.7), 0.8),
    }.items():
        for recipe, errors in (("transfer", transfer), ("paper", paper)):
            for seed, error in zip(("12345", "1"), errors):
                write(f"lofo_{family}_{recipe}_seed{seed}", 0.99, stamp="2026-01-01_00-00-00")
                write(f"lofo_{family}_{recipe}_seed{seed}", error)
        write(f"lofo_{family}_baseline", baseline)
    text = module.table(["tim", "lmms"], ["12345", "1"], root=tmp_path)
    assert (
        "| `tim` | 35.0 %, F 0.650 (30.0, 40.0) (n=100) | 50.0 %, F 0.500 (50.0, 50.0) (n=100) | 60.0 %, F 0.400 (n=100) |"
        in text
    )
    assert "| mean | 45.0 %, F 0.550 | 60.0 %, F 0.400 | 70.0 %, F 0.300 |" in text
    one_seed = module.table(["tim"], ["12345", "7"], root=tmp_path)
    assert "30.0 %, F 0.700 (1 of 2 seeds) (n=100)" in one_seed  # a seed not run is said, not averaged in
    partial = module.table(["tim", "fluid"], ["12345", "1"], root=tmp_path)
    assert "not run" in partial and "1 of 2 folds run" in partial
    write("lofo_tim_transfer_fp32_seed12345", 0.25)  # LOFO_TAG=_fp32: its own runs, beside the others
    assert "| `tim` | 25.0 %, F 0.750 (n=100) |" in module.table(["tim"], ["12345"], tag="_fp32", root=tmp_path)


def test_the_leave_one_family_out_validation_table_reads_each_runs_best_checkpoint_score(tmp_path):
    import torch

    module = load_transfer_table()

    def write(task, best, stamp="2026-02-01_00-00-00", finished=True):
        checkpoints = tmp_path / task / stamp / "checkpoints"
        checkpoints.mkdir(parents=True)
        if finished:  # a finished run has its test metrics; a run still training only its last.ckpt
            (checkpoints.parent / "metrics.json").write_text(json.dumps({"test": {"top1_error": 0.5}}))
        callbacks = {  # as Lightning stores them: the state key names the callback and its monitor
            "ModelCheckpoint{'monitor': 'val/top1_error', 'mode': 'min'}": {
                "monitor": "val/top1_error",
                "best_model_score": torch.tensor(best),
            },
            "LastCheckpoint{'monitor': None}": {"monitor": None, "best_model_score": None},
        }
        torch.save({"callbacks": callbacks}, checkpoints / "last.ckpt")

    for recipe, (tim, lmms) in {
        "transfer": ((0.30, 0.40), (0.50, 0.60)),
        "paper": ((0.70, 0.70), (0.80, 0.90)),
    }.items():
        for seed, best_tim, best_lmms in zip(("12345", "1"), tim, lmms):
            write(f"lofo_tim_{recipe}_seed{seed}", 0.99, stamp="2026-01-01_00-00-00")  # older: not read
            write(f"lofo_tim_{recipe}_seed{seed}", best_tim)
            write(f"lofo_lmms_{recipe}_seed{seed}", best_lmms)
            write(f"lofo_lmms_{recipe}_seed{seed}", 0.01, stamp="2026-03-01_00-00-00", finished=False)  # not read
    text = module.validation_table(["tim", "lmms"], ["12345", "1"], root=tmp_path)
    assert "| ConvNet, `experiment=transfer` | 35.0 % (30.0, 40.0) | 55.0 % (50.0, 60.0) | 45.0 % |" in text
    assert "| 70.0 % (70.0, 70.0) | 85.0 % (80.0, 90.0) | 77.5 % |" in text
    partial = module.validation_table(["tim", "fluid"], ["12345", "7"], root=tmp_path)
    assert "30.0 % (1 of 2 seeds)" in partial and "not run" in partial and "1 of 2 folds run" in partial


def test_scheduler_cosine_decays_the_learning_rate_and_paper_keeps_it_constant(compose_cfg, tiny_h5, tmp_path):
    import math

    overrides = [f"data.path={tiny_h5}", *FAST, "logger=csv", "test_splits=[]"]
    assert not compose_cfg("train", [*overrides, "experiment=paper"]).scheduler
    train(compose_cfg("train", [*overrides, "scheduler=cosine"]))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (scheduler,) = state["lr_schedulers"]
    epoch = scheduler["last_epoch"]
    expected = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * epoch / 3)) / 2
    assert scheduler["T_max"] == 3 and epoch >= 2
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(expected, rel=1e-6)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt").hparams["scheduler"]["T_max"] == 3


def test_weight_averaging_is_what_the_checkpoint_holds_and_what_is_scored(compose_cfg, tiny_h5, tmp_path, monkeypatch):
    import amir_pl.training.train as training

    scored = {}

    def score_and_keep_the_weights(trainer, module, *args, **kwargs):
        summaries = score_splits(trainer, module, *args, **kwargs)
        scored.update({name: value.clone() for name, value in module.state_dict().items()})
        return summaries

    monkeypatch.setattr(training, "score_splits", score_and_keep_the_weights)
    averaging = [
        "+callbacks.weight_averaging._target_=amir_pl.training.averaging.EMAWeights",
        "+callbacks.weight_averaging.decay=0.5",
    ]
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "logger=csv", "experiment=transfer", *averaging])
    summaries = training.train(cfg)
    ckpt = next((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    average, raw = state["state_dict"], state["current_model_state"]
    weight = "net.features.conv1.0.weight"
    assert not torch.equal(average[weight], raw[weight])  # the average is not the last step's weights
    for name, value in average.items():  # the test after fit scored the average, not the raw weights
        torch.testing.assert_close(scored[name], value, rtol=0, atol=0)
    evaluated = evaluate(compose_cfg("evaluate", [f"ckpt_path={ckpt}", f"data.path={tiny_h5}", "splits=[test]"]))
    assert evaluated["test"]["confusion_matrix"] == summaries["test"]["confusion_matrix"]


def test_label_smoothing_softens_the_training_targets_only(monkeypatch):
    net = {"_target_": "amir_pl.training.model.SegalConvNet", "input_norm": "none"}
    with pytest.raises(AmirError, match="module.label_smoothing=1.0 must be in"):
        AmirModule(net, {"_target_": "torch.optim.Adam"}, TINY_CLASSES, FEATURES, (32, 33), label_smoothing=1.0)
    module = AmirModule(net, {"_target_": "torch.optim.Adam"}, TINY_CLASSES, FEATURES, (32, 33), label_smoothing=0.2)
    module.eval()  # no dropout: the same logits twice
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    x, y = _batch()
    with torch.no_grad():
        trained = module.training_step((x, y), 0)
        logits = module(x)
        plain = torch.nn.functional.cross_entropy(logits, y)
        log_p = torch.log_softmax(logits, dim=1)
        smoothed = 0.8 * plain - 0.2 * log_p.mean(dim=1).mean()
    torch.testing.assert_close(trained, smoothed)
    assert not torch.allclose(trained, plain)
    assert float(module._step((x, y))[-1]) == pytest.approx(float(plain))  # validation and test: plain cross-entropy
