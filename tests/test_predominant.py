"""Training for the predominant instruments in music with accompaniment: clips rendered over
accompaniment (amir-synth), the multi-hot ``targets`` of the dataset file, mixing clips of the batch,
the sigmoid objective end to end, and choosing the checkpoint on multi-label validation metrics."""

import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import FAST, TINY_CLASSES, TINY_FEATURES
from omegaconf import open_dict
from test_prepare import write_tone
from test_synth_mixtures import CLASSES, _db, _render, make_library

from amir_pl.core.errors import AmirError
from amir_pl.dataset.prepare import prepare
from amir_pl.dataset.schema import DatasetFileError, DatasetWriter, read_info, write_synthetic
from amir_pl.features.audio import MelFrontEnd
from amir_pl.features.params import FeatureParams
from amir_pl.inference.export import export, load_exported
from amir_pl.inference.predict import predict
from amir_pl.inference.recordings import evaluate_recordings
from amir_pl.training.augment import BatchAugment, mel_centres, warp_mel_axis
from amir_pl.training.baseline import mfcc_statistics
from amir_pl.training.data import H5ClipDataset
from amir_pl.training.module import (
    AmirModule,
    load_checkpoint,
    pairwise_ranking_loss,
    supervised_contrastive_loss,
)
from amir_pl.training.train import train


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("library"))


ACCOMPANIED = ["accompaniment.probability=1.0", "accompaniment.instruments=[1,3]", "noise_probability=0"]


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --- the renderer ---------------------------------------------------------------------------------


def test_accompanied_clips_list_their_instruments_at_the_drawn_levels_from_their_own_splits_families(
    compose_cfg, library, tmp_path
):
    solo = _render(compose_cfg, tmp_path / "solo", library, "noise_probability=0")
    output = _render(compose_cfg, tmp_path / "acc", library, *ACCOMPANIED, "accompaniment.stems=true")
    rows = _rows(output / "manifest.csv")
    families = {"made": "train", "held": "val"}  # _render: train plays `made`, val and test `held`
    counts = set()
    for row in rows:
        instruments = row["instruments"].split(";")
        assert instruments[0] == row["label"] and len(set(instruments)) == len(instruments)
        if row["split"] == "test":  # accompaniment.splits=[train, val]: the test clips stay solo
            assert instruments == [row["label"]] and not row["accompaniment_db"]
            continue
        backing, levels = instruments[1:], [float(v) for v in row["accompaniment_db"].split(";")]
        sources = row["accompaniment_sources"].split(";")
        assert 1 <= len(backing) <= 3 and len(levels) == len(sources) == len(backing)
        assert all(families[source] == row["split"] for source in sources)  # no family crosses splits
        assert all(-15.0 <= level <= -5.0 for level in levels)
        stems = {
            name: sf.read(output / "clip_stems" / Path(row["path"]).with_suffix("") / f"{name}.flac")[0]
            for name in instruments
        }
        audio = sf.read(output / row["path"])[0]
        assert np.abs(sum(stems.values()) - audio).max() < 5e-4  # the parts sum to the clip (16-bit rounding)
        lead = _db(stems[row["label"]])
        for name, level in zip(backing, levels, strict=True):
            assert abs(_db(stems[name]) - lead - level) < 0.1, (row, name)
        # the clip's own instrument plays what its solo clip plays, at another gain
        alone = sf.read(solo / row["path"])[0]
        assert np.corrcoef(alone, stems[row["label"]])[0, 1] > 0.999
        counts.add(len(backing))
    assert counts >= {1, 2}  # up to 3: the families here play 3 or 4 classes, so 2 or 3 others


def test_accompaniment_is_deterministic_off_by_default_and_refuses_bad_options(compose_cfg, library, tmp_path):
    one = _render(compose_cfg, tmp_path / "one", library, *ACCOMPANIED)
    two = _render(compose_cfg, tmp_path / "two", library, *ACCOMPANIED, "num_workers=2")
    other = _render(compose_cfg, tmp_path / "other", library, *ACCOMPANIED, "seed=7")
    clips = sorted(p.relative_to(one) for p in one.rglob("*.flac"))
    assert clips and all((one / name).read_bytes() == (two / name).read_bytes() for name in clips)
    assert (one / "manifest.csv").read_bytes() == (two / "manifest.csv").read_bytes()
    assert (one / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()
    plain = _render(compose_cfg, tmp_path / "plain", library)
    assert {row["accompaniment_sources"] for row in _rows(plain / "manifest.csv")} == {""}  # off by default
    for override, message in (
        ("accompaniment.level_db=[-6.0,0.0]", r"accompaniment.level_db=\[-6.0, 0.0\]: give \[low, high\] below 0"),
        ("accompaniment.instruments=[0,2]", r"accompaniment.instruments=\[0, 2\]: give a range"),
        ("accompaniment.splits=[tset]", r"accompaniment.splits=\['tset'\]: \['tset'\] not a split"),
    ):
        with pytest.raises(AmirError, match=message):
            _render(compose_cfg, tmp_path / "bad", library, "accompaniment.probability=0.5", override)


# --- the dataset file's multi-hot targets -------------------------------------------------------------


def test_prepare_writes_the_manifests_instruments_as_targets_and_a_folder_scan_writes_none(
    compose_cfg, library, tmp_path
):
    output = _render(compose_cfg, tmp_path / "acc", library, *ACCOMPANIED)
    overrides = ["overwrite=true", "progress=false", "num_workers=1", f"classes={CLASSES}"]
    prepare(compose_cfg("prepare", [f"source={output / 'manifest.csv'}", f"output={tmp_path / 'm.h5'}", *overrides]))
    prepare(compose_cfg("prepare", [f"source={output}", f"output={tmp_path / 'f.h5'}", *overrides]))
    info = read_info(tmp_path / "m.h5")
    assert info.targets == ("train", "val", "test") and read_info(tmp_path / "f.h5").targets == ()
    classes = list(info.class_names)
    expected = {row["path"]: set(row["instruments"].split(";")) for row in _rows(output / "manifest.csv")}
    with h5py.File(tmp_path / "m.h5", "r") as f:
        for split in info.targets:
            targets, y = f[split]["targets"][()], f[split]["y"][()]
            assert targets.dtype == np.uint8 and targets.shape == (len(y), len(classes))
            for row, source, label in zip(targets, f[split]["source"].asstr()[()], y, strict=True):
                assert {classes[i] for i in np.flatnonzero(row)} == expected[source] and row[label] == 1
    # the loader yields them third; a file without them yields (x, y) as before
    batch = H5ClipDataset(tmp_path / "m.h5", "train", info.splits["train"]).__getitems__([0, 1])
    assert len(batch) == 3 and batch[2].shape == (2, len(classes))
    assert len(H5ClipDataset(tmp_path / "f.h5", "train", info.splits["train"]).__getitems__([0, 1])) == 2
    # the MFCC baseline reads it as before
    features, labels = mfcc_statistics(info, "train")
    assert len(features) == len(labels) == info.splits["train"]
    # a solo render's manifest lists one instrument a clip: no targets, the file a folder scan gives
    solo = _render(compose_cfg, tmp_path / "solo", library)
    prepare(compose_cfg("prepare", [f"source={solo / 'manifest.csv'}", f"output={tmp_path / 's.h5'}", *overrides]))
    assert read_info(tmp_path / "s.h5").targets == ()


def test_targets_that_lack_a_clips_own_label_are_refused(tmp_path):
    path = tmp_path / "bad.h5"
    with DatasetWriter(path, TINY_CLASSES, TINY_FEATURES) as writer:
        x = np.zeros((2, TINY_FEATURES.n_mels, TINY_FEATURES.frames), dtype=np.float16)
        targets = np.array([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=np.uint8)
        writer.append("train", x, [0, 3], ["a.wav", "b.wav"], [0.0, 0.0], targets)
    with pytest.raises(DatasetFileError, match="dataset 'train/targets' row 1 lacks its own label y=3"):
        read_info(path)


# --- mixing clips of the batch --------------------------------------------------------------------------


def _banded_batch(n=8):
    """Clip i sounds only in mel bands 4i..4i+3, at a power of 10^(i/4) there: which clips were mixed
    into a clip, and at what level, can be read back from its bands."""
    x = torch.full((n, 32, 33), 1e-10)
    for i in range(n):
        x[i, 4 * i : 4 * i + 4] = 10 ** (i / 4)
    return x, torch.arange(n) % len(TINY_CLASSES)


@pytest.mark.parametrize("max_clips", [1, 3])
@pytest.mark.parametrize("file_targets", [False, True])
def test_batch_mixing_adds_distinct_clips_at_their_drawn_levels_with_the_targets_of_the_predominant_ones(
    max_clips, file_targets
):
    augment = BatchAugment(
        "power",
        TINY_FEATURES.as_dict(),
        len(TINY_CLASSES),
        mix_probability=0.75,
        mix_max_clips=max_clips,
        mix_level_db=(-12.0, 0.0),
        mix_predominant_db=-6.0,
        mix_background_weight=0.25,
    )
    x, y = _banded_batch()
    own = torch.nn.functional.one_hot(y, len(TINY_CLASSES)).float()
    if file_targets:  # a clip's accompaniment at a target of 0.5 (module.accompaniment_target)
        own = torch.maximum(own, 0.5 * torch.nn.functional.one_hot((y + 2) % len(TINY_CLASSES), len(TINY_CLASSES)))
    torch.manual_seed(0)
    mixed, target = augment(x, own if file_targets else y)
    assert mixed.shape == x.shape and target.shape == (8, len(TINY_CLASSES))
    counts = []
    for i in range(8):
        expected = own[i].clone()
        added = 0
        for j in range(8):
            if j == i:
                torch.testing.assert_close(mixed[i, 4 * i : 4 * i + 4], x[i, 4 * i : 4 * i + 4])  # its own part
                continue
            band = mixed[i, 4 * j : 4 * j + 4].mean()
            if band < 1e-6:
                continue  # not mixed in
            level_db = float(10 * torch.log10(band / 10 ** (i / 4)))
            assert -12.0 - 1e-3 <= level_db <= 1e-3, (i, j, level_db)
            weight = 1.0 if level_db >= -6.0 else 0.25
            expected = torch.maximum(expected, weight * own[j])
            added += 1
        torch.testing.assert_close(target[i], expected)
        counts.append(added)
    assert max(counts) <= max_clips and 0 in counts and max(counts) >= 1
    torch.manual_seed(0)
    again = augment(x, own if file_targets else y)
    torch.testing.assert_close(again[0], mixed)
    torch.testing.assert_close(again[1], target)
    torch.manual_seed(1)
    assert not torch.allclose(augment(x, y)[0], mixed)


def test_batch_mixing_is_off_in_paper_and_transfer_and_refused_beside_mixup(compose_cfg, tiny_h5):
    for experiment in ("paper", "transfer"):
        cfg = compose_cfg("train", [f"data.path={tiny_h5}", f"experiment={experiment}"])
        assert not (cfg.augment or {}).get("mix_probability") and cfg.module.objective == "softmax"
        assert list(cfg.model.rfn_after) == []  # the thesis net: no RFN
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", "experiment=predominant"])
    assert cfg.augment.mix_probability > 0 and cfg.module.objective == "sigmoid" and cfg.data.batch_size == 32
    assert list(cfg.model.rfn_after) == ["conv1", "conv2"] and cfg.model.rfn_lambda == 0.5
    x, y = _banded_batch()
    plain = BatchAugment("power", TINY_FEATURES.as_dict(), len(TINY_CLASSES), gain_db=3.0)
    assert torch.equal(plain(x, y)[1], y)  # nothing mixes: class indices, as before
    with pytest.raises(AmirError, match="mixup_alpha and mix_probability both mix clips"):
        BatchAugment("power", TINY_FEATURES.as_dict(), 5, mixup_alpha=0.3, mix_probability=0.5)
    with pytest.raises(AmirError, match=r"mix_level_db=\[-6.0, 3.0\]"):
        BatchAugment("power", TINY_FEATURES.as_dict(), 5, mix_probability=0.5, mix_level_db=(-6.0, 3.0))


# --- the sigmoid objective, end to end ----------------------------------------------------------------


def test_the_sigmoid_loss_fits_every_target_and_the_accompaniment_target_weights_the_files_targets():
    module = AmirModule(
        net={"_target_": "amir_pl.training.model.SegalConvNet", "channels": 4, "fc_units": 8},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3},
        class_names=TINY_CLASSES,
        features=TINY_FEATURES.as_dict(),
        input_shape=(32, 33),
        objective="sigmoid",
        accompaniment_target=0.3,
    )
    x, y = torch.rand(2, 32, 33), torch.tensor([0, 3])
    targets = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.uint8)
    _, _, target = module._targets((x, y, targets))
    torch.testing.assert_close(target, torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0, 0, 1.0, 0]]))
    logits = torch.randn(2, 5)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 2
    torch.testing.assert_close(module._loss(logits, target), expected)
    with pytest.raises(AmirError, match="module.objective='softmx'"):
        AmirModule(
            module.hparams.net,
            module.hparams.optimizer,
            TINY_CLASSES,
            TINY_FEATURES.as_dict(),
            (32, 33),
            objective="softmx",
        )


def tiny_module(objective: str = "sigmoid", **loss) -> AmirModule:
    """A tiny sigmoid (or ``objective``) module to call ``_loss`` on."""
    return AmirModule(
        net={"_target_": "amir_pl.training.model.SegalConvNet", "channels": 4, "fc_units": 8},
        optimizer={"_target_": "torch.optim.Adam"},
        class_names=TINY_CLASSES,
        features=TINY_FEATURES.as_dict(),
        input_shape=(32, 33),
        objective=objective,
        **loss,
    )


def test_the_asymmetric_loss_is_cross_entropy_for_present_classes_and_discounts_easy_absent_ones():
    target = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0]])
    logits = torch.tensor([[2.0, -4.0, -1.0, 0.5, 3.0], [-2.0, -6.0, 1.0, -1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    asl = tiny_module(negative_focus=4.0, negative_margin=0.05)
    per_class = asl._loss(logits, target) * 2  # the mean over the two clips of the sum over the classes
    p = torch.sigmoid(logits)
    shifted = (p - 0.05).clamp_min(0)
    expected = torch.where(target == 1, bce, -(shifted**4) * torch.log(1 - shifted))
    torch.testing.assert_close(per_class, expected.sum())
    assert float(expected[0, 1]) == 0.0 < float(bce[0, 1])  # p below the margin: an absent class that costs nothing
    assert float(expected[0, 4]) < float(bce[0, 4])  # a confident mistake still costs, if less than in cross-entropy
    torch.testing.assert_close(
        tiny_module(negative_focus=0.0, negative_margin=0.0)._loss(logits, target), bce.sum() / 2
    )
    # no margin (the log-sigmoid branch), on a soft target: each term weighted by the target
    soft = torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0, 0, 1.0, 0]])
    log_p, log_not_p = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    expected = -(soft * log_p + (1 - soft) * torch.sigmoid(logits) ** 2 * log_not_p)
    torch.testing.assert_close(tiny_module(negative_focus=2.0)._loss(logits, soft) * 2, expected.sum())
    for bad in ({"negative_focus": -1.0}, {"negative_focus": math.nan}, {"negative_margin": 1.0}):
        with pytest.raises(AmirError, match="asymmetric loss"):
            tiny_module(**bad)
    with pytest.raises(AmirError, match="objective=sigmoid"):
        tiny_module("softmax", negative_focus=4.0)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_the_ranking_term_costs_where_an_absent_class_outranks_a_present_one():
    target = torch.tensor([[1.0, 0, 0, 1.0, 0], [0, 0.3, 0.5, 1.0, 0], [0, 0, 0, 0, 0]])
    logits = torch.tensor([[2.0, -4.0, -1.0, 0.5, 3.0], [-2.0, 5.0, 1.0, -1.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    # by hand: every (present, absent) pair of a clip, present where the target is >= 0.5 (0.5 is, 0.3 is not)
    expected = []
    for row_logits, row_target in zip(logits.tolist(), target.tolist()):
        present = [i for i, t in enumerate(row_target) if t >= 0.5]
        absent = [i for i, t in enumerate(row_target) if t < 0.5]
        total = sum(math.exp(row_logits[a] - row_logits[p]) for p in present for a in absent)
        expected.append(math.log1p(total))
    ranking = pairwise_ranking_loss(logits, target)
    torch.testing.assert_close(ranking, torch.tensor(expected))
    assert float(ranking[2]) == 0.0  # no present class: no pair, no cost, and a finite gradient
    lone = torch.zeros(2, 5, requires_grad=True)
    with torch.autograd.detect_anomaly():
        pairwise_ranking_loss(lone, torch.tensor([[0.0] * 5, [1.0] * 5])).sum().backward()
    assert torch.equal(lone.grad, torch.zeros(2, 5))
    # a clip ranked right costs less than the same clip ranked wrong, and its gradient lifts the present class
    right = torch.tensor([[4.0, -4.0, -4.0]], requires_grad=True)
    pairwise_ranking_loss(right, torch.tensor([[1.0, 0, 0]])).sum().backward()
    assert float(right.grad[0, 0]) < 0 < float(right.grad[0, 1])
    wrong = pairwise_ranking_loss(torch.tensor([[-4.0, 4.0, -4.0]]), torch.tensor([[1.0, 0, 0]]))
    assert float(wrong[0]) > 8 > 1e-3 > float(pairwise_ranking_loss(right.detach(), torch.tensor([[1.0, 0, 0]]))[0])
    # the module adds it, weighted, to the binary cross-entropy; 0 leaves the cross-entropy alone
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
    torch.testing.assert_close(tiny_module(ranking_weight=0.5)._loss(logits, target), (bce + 0.5 * ranking).mean())
    torch.testing.assert_close(tiny_module()._loss(logits, target), bce.mean())
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(AmirError, match=f"ranking_weight={bad}"):
            tiny_module(ranking_weight=bad)
    with pytest.raises(AmirError, match="objective=sigmoid"):
        tiny_module("softmax", ranking_weight=1.0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step called without a trainer
@pytest.mark.parametrize("objective", ["sigmoid", "softmax"])
@pytest.mark.parametrize(("reduction", "weight"), [("mean", 0.75), ("sum", 1.0)])
def test_distillation_fits_the_teachers_mean_scores_of_the_same_batch_beside_the_labels(objective, reduction, weight):
    torch.manual_seed(0)
    teachers = [tiny_module(objective).net.eval() for _ in range(2)]
    student = tiny_module(objective, teachers=["unused.ckpt"], teacher_weight=weight, loss_reduction=reduction)
    student._teachers = teachers  # set by hand: not loaded
    x, y = torch.rand(3, 32, 33), torch.tensor([0, 2, 4])
    with torch.no_grad():
        by_hand = [torch.softmax(t(x), 1) if objective == "softmax" else torch.sigmoid(t(x)) for t in teachers]
    scores = student.teacher_scores(x)
    torch.testing.assert_close(scores, (by_hand[0] + by_hand[1]) / 2)
    assert not scores.requires_grad
    loss = student.training_step((x, y), 0)
    logits = student(x)
    label_loss = student._loss(logits, y if objective == "softmax" else F.one_hot(y, 5).float())
    if objective == "sigmoid":
        soft = F.binary_cross_entropy_with_logits(logits, scores, reduction="none").sum(dim=1)
    else:
        soft = -(scores * torch.log_softmax(logits, 1)).sum(dim=1)
    soft = soft.mean() if reduction == "mean" else soft.sum()
    torch.testing.assert_close(loss, (1 - weight) * label_loss + weight * soft)
    # the teachers are no part of the model: not in its weights, and untouched by its gradients
    assert student.state_dict().keys() == tiny_module(objective).state_dict().keys()
    loss.backward()
    assert all(p.grad is None for t in teachers for p in t.parameters())
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(AmirError, match=f"teacher_weight={bad}"):
            tiny_module(teachers=["a.ckpt"], teacher_weight=bad)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step called without a trainer
def test_the_contrastive_loss_draws_a_class_together_and_is_added_to_the_labels_loss_by_its_weight():
    labels = torch.tensor([0, 0, 1, 1, 2])
    # by hand, the "out" form: per anchor with positives, minus the mean over them of log softmax over the others
    z = F.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.1], [-0.1, 1.0], [0.3, 0.8], [-1.0, -1.0]]), dim=1)
    expected = []
    for i in range(5):
        others = [j for j in range(5) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if positives:
            log_denominator = math.log(sum(math.exp(float(z[i] @ z[j]) / 0.5) for j in others))
            expected.append(-sum(float(z[i] @ z[j]) / 0.5 - log_denominator for j in positives) / len(positives))
    scaled = torch.tensor([[1.0, 0.2], [0.9, 0.1], [-0.1, 1.0], [0.3, 0.8], [-1.0, -1.0]]) * 7  # cosine: any length
    torch.testing.assert_close(supervised_contrastive_loss(scaled, labels, 0.5), torch.tensor(sum(expected) / 4))
    # a class drawn together costs less than the same points with the classes apart
    together = supervised_contrastive_loss(
        torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]]), labels[:4], 0.1
    )
    apart = supervised_contrastive_loss(torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0.01], [0.01, 1.0]]), labels[:4], 0.1)
    assert float(together) < 0.01 < 2 < float(apart)
    # no clip with another of its class: no cost, and a finite gradient
    lone = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(lone, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(lone.grad, torch.zeros(3, 4))
    one = torch.randn(1, 4, requires_grad=True)
    loss = supervised_contrastive_loss(one, torch.tensor([3]), 0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(one.grad, torch.zeros(1, 4))
    # float32 under bf16 autocast, as the fp32 value
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = supervised_contrastive_loss(scaled, labels, 0.5)
    assert in_autocast.dtype == torch.float32
    torch.testing.assert_close(in_autocast, supervised_contrastive_loss(scaled, labels, 0.5))
    # the module adds it, weighted, to the labels' loss on the net's embedding of the same forward pass
    for objective, reduction in (("sigmoid", "mean"), ("softmax", "sum")):
        torch.manual_seed(0)
        module = tiny_module(objective, contrastive_weight=0.3, contrastive_temperature=0.2, loss_reduction=reduction)
        x, y = torch.rand(6, 32, 33), torch.tensor([0, 0, 2, 2, 4, 1])
        loss = module.training_step((x, y), 0)
        logits, embedding = module.net(x, return_embedding=True)
        torch.testing.assert_close(logits, module(x))  # the same logits with the embedding as without
        assert embedding.shape == (6, 8) and float(embedding.min()) < 0  # before the ReLU
        label_loss = module._loss(logits, y if objective == "softmax" else F.one_hot(y, 5).float())
        scale = 6 if reduction == "sum" else 1
        torch.testing.assert_close(loss, label_loss + 0.3 * scale * supervised_contrastive_loss(embedding, y, 0.2))
    for bad in ({"contrastive_weight": -1.0}, {"contrastive_weight": math.nan}, {"contrastive_temperature": 0.0}):
        with pytest.raises(AmirError, match="contrastive_weight=.*contrastive_temperature="):
            tiny_module(**{"contrastive_weight": 0.5, **bad})
    tiny_module(contrastive_temperature=0.0)  # off: its temperature is not read


def test_sam_applies_the_gradient_taken_uphill_to_the_weights_as_they_were():
    import copy

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    rho, lr = 0.05, 0.1
    module = AmirModule(
        net={"_target_": "amir_pl.training.model.SegalConvNet", "channels": 4, "fc_units": 8},
        optimizer={"_target_": "torch.optim.SGD", "lr": lr},
        class_names=TINY_CLASSES,
        features=TINY_FEATURES.as_dict(),
        input_shape=(32, 33),
        objective="sigmoid",
        sam_rho=rho,
    )
    assert not module.automatic_optimization
    x, y = torch.rand(4, 32, 33), torch.tensor([0, 1, 2, 4])
    by_hand, start = copy.deepcopy(module.net), copy.deepcopy(module.net)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    assert trainer.global_step == 1  # one optimiser step for the two gradients
    # by hand: the gradient at w + rho g / |g|, applied at w
    params = list(by_hand.parameters())
    target = F.one_hot(y, 5).float()

    def gradient():
        for p in params:
            p.grad = None
        F.binary_cross_entropy_with_logits(by_hand(x), target, reduction="none").sum(1).mean().backward()
        return [p.grad.clone() for p in params]

    first = gradient()
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in first]))
    with torch.no_grad():
        for p, g in zip(params, first):
            p.add_(rho * g / norm)
    second = gradient()
    with torch.no_grad():
        for p, g, g2 in zip(params, first, second):
            p.sub_(rho * g / norm).sub_(lr * g2)
    for mine, theirs in zip(module.net.parameters(), params):
        torch.testing.assert_close(mine, theirs)
    # the input BatchNorm's running statistics moved once, by the first pass, not again by the second
    once = copy.deepcopy(start)
    with torch.no_grad():
        once(x)
    for name in ("norm.running_mean", "norm.running_var"):
        torch.testing.assert_close(module.net.get_buffer(name), once.get_buffer(name))
    assert module.net.norm.momentum == start.norm.momentum  # restored after the second pass
    assert any(not torch.allclose(g, g2) for g, g2 in zip(first, second))  # uphill is not where it started
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(AmirError, match=f"module.sam_rho={bad}"):
            tiny_module(sam_rho=bad)


@pytest.fixture(scope="module")
def sigmoid_run(tmp_path_factory):
    """A sigmoid model trained with batch mixing on a file with targets, the checkpoint chosen on val/lrap."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    root = tmp_path_factory.mktemp("sigmoid")
    data = write_synthetic(root / "tiny.h5", {"train": 24, "val": 6, "test": 7}, TINY_CLASSES, TINY_FEATURES, seed=4)
    with h5py.File(data, "a") as f:  # every clip also sounds the next class: multi-hot targets
        for split in ("train", "val", "test"):
            y = f[split]["y"][()]
            targets = np.zeros((len(y), len(TINY_CLASSES)), dtype=np.uint8)
            targets[np.arange(len(y)), y] = targets[np.arange(len(y)), (y + 1) % len(TINY_CLASSES)] = 1
            f[split].create_dataset("targets", data=targets)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="amir_pl.conf", version_base="1.3"):
        cfg = compose(
            "train",
            [f"data.path={data}", "experiment=predominant", *FAST, "trainer.max_epochs=4", "logger=csv"]
            + ["module.channels_last=false", "module.accompaniment_target=1.0"],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    summaries = train(cfg)
    GlobalHydra.instance().clear()
    return root / "run", data, summaries


def test_the_checkpoint_is_chosen_on_validation_lrap_and_the_reports_carry_the_multilabel_scores(sigmoid_run):
    run, _, summaries = sigmoid_run
    with (run / "csv" / "metrics.csv").open() as f:
        lraps = [float(row["val/lrap"]) for row in csv.DictReader(f) if row.get("val/lrap")]
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    callback = next(state for key, state in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint"))
    assert (
        len(lraps) == 4
        and callback["monitor"] == "val/lrap"
        and callback["best_model_score"] == pytest.approx(max(lraps))
    )
    assert int(best.name[5:8]) == int(np.argmax(lraps))  # the epoch of the highest LRAP, not the lowest error
    multilabel = json.loads((run / "metrics.json").read_text())["test"]["multilabel"]
    assert multilabel == summaries["test"]["multilabel"] and 0 < multilabel["lrap"] <= 1


def test_a_student_trains_on_its_teachers_scores_and_its_checkpoint_holds_only_its_own_net(
    sigmoid_run, compose_cfg, monkeypatch, tmp_path
):
    run, data, _ = sigmoid_run
    (teacher,) = (run / "checkpoints").glob("epoch*.ckpt")
    calls = []
    original = AmirModule.teacher_scores

    def spy(self, x):
        assert self._teachers and all(
            not t.training and not any(p.requires_grad for p in t.parameters()) for t in self._teachers
        )
        conv_weights = [p for t in self._teachers for p in t.parameters() if p.ndim == 4]
        assert self.channels_last and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(AmirModule, "teacher_scores", spy)
    base = [f"data.path={data}", "experiment=predominant", *FAST, "trainer.max_epochs=2", "logger=csv"]
    relative = os.path.relpath(teacher)  # recorded as an absolute path
    cfg = compose_cfg("train", [*base, f"module.teachers=[{relative}]", "module.teacher_weight=0.9"])
    train(cfg)
    with h5py.File(data) as f:
        assert sum(calls) == 2 * len(f["train"]["y"])  # each training clip in both epochs; no validation or test clip
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    student = load_checkpoint(ckpt)
    assert student.hparams["teachers"] == [str(teacher.resolve())] and student.hparams["teacher_weight"] == 0.9
    assert student.state_dict().keys() == load_checkpoint(teacher).state_dict().keys() and not student._teachers
    # a teacher that cannot teach this run is refused before the run starts, naming it and the option
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    refusals = {
        f"{run}/missing.ckpt": "missing.ckpt: no such file",
        str(run): "a folder, not a checkpoint",
        str(tmp_path / "junk.ckpt"): "junk.ckpt: not a readable amir-pl checkpoint",
    }
    for i, (path, message) in enumerate(refusals.items()):
        cfg = compose_cfg("train", [*base, f"module.teachers=[{teacher},{path}]"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"refused{i}")
        with pytest.raises(AmirError, match=f"module.teachers: .*{message}"):
            train(cfg)
        assert not (tmp_path / f"refused{i}" / "checkpoints").exists()
    with pytest.raises(AmirError, match=r"module.objective sigmoid, this run has softmax"):
        train(compose_cfg("train", [*base, "module.objective=softmax", f"module.teachers=[{teacher}]"]))
    same_stream = AmirModule(**{**student.hparams, "teachers": [str(teacher)]})
    state = torch.get_rng_state()
    same_stream.load_teachers()  # draws nothing from the run's stream: its augmentation is its baseline's
    assert len(same_stream._teachers) == 1 and torch.equal(torch.get_rng_state(), state)
    other_front_end = AmirModule(**{**student.hparams, "teachers": [str(teacher)]})
    other_front_end.hparams.features["f_max"] = 8000.0
    with pytest.raises(AmirError, match=r"with features .*'f_max': 11025.0.* this run has .*'f_max': 8000.0"):
        other_front_end.load_teachers()


def test_a_run_with_the_contrastive_loss_logs_it_in_its_loss_and_keeps_the_plain_nets_weights(
    sigmoid_run, compose_cfg, tmp_path
):
    run, data, _ = sigmoid_run
    base = [f"data.path={data}", "experiment=predominant", *FAST, "trainer.max_epochs=1", "logger=csv"]
    losses = {}
    for weight in (0.0, 2.0):
        cfg = compose_cfg("train", [*base, f"module.contrastive_weight={weight}"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"w{weight}")
        train(cfg)
        with (tmp_path / f"w{weight}" / "csv" / "metrics.csv").open() as f:
            losses[weight] = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
        (ckpt,) = (tmp_path / f"w{weight}" / "checkpoints").glob("epoch*.ckpt")
        model = load_checkpoint(ckpt)
        assert model.hparams["contrastive_weight"] == weight
        assert (
            model.state_dict().keys()
            == load_checkpoint(next((run / "checkpoints").glob("epoch*.ckpt"))).state_dict().keys()
        )
    assert losses[2.0][0] > losses[0.0][0]  # the same seed and batches, plus a positive term
    with pytest.raises(AmirError, match="needs a net whose forward can return its embedding"):
        AmirModule(**{**model.hparams, "net": {"_target_": f"{__name__}.NetWithoutEmbedding"}})


def test_a_run_with_sam_steps_once_a_batch_and_its_schedule_once_an_epoch_and_refuses_clipping(
    sigmoid_run, compose_cfg, tmp_path
):
    _, data, _ = sigmoid_run
    base = [f"data.path={data}", "experiment=predominant", *FAST, "trainer.max_epochs=2", "logger=csv"]
    cfg = compose_cfg("train", [*base, "module.sam_rho=0.05"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "sam")
    train(cfg)
    checkpoint = torch.load(tmp_path / "sam" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    with h5py.File(data) as f:
        batches = math.ceil(len(f["train"]["y"]) / 16)
    assert checkpoint["global_step"] == 2 * batches and checkpoint["hyper_parameters"]["sam_rho"] == 0.05
    (scheduler,) = checkpoint["lr_schedulers"]
    assert scheduler["last_epoch"] == 2  # the cosine schedule stepped at the end of each epoch, as without SAM
    for option, fix in (
        ("trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val=null"),
        ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=1"),
    ):
        with pytest.raises(
            AmirError, match=f"module.sam_rho with {option.lstrip('+')}: .*set {fix} or module.sam_rho=0"
        ):
            train(compose_cfg("train", [*base, "module.sam_rho=0.05", option]))


class NetWithoutEmbedding(torch.nn.Linear):
    """A net of the module's interface whose forward cannot return an embedding."""

    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape[0] * input_shape[1], num_classes)


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_a_sigmoid_checkpoint_scores_per_class_in_predict_evaluate_recordings_and_export(
    sigmoid_run, compose_cfg, tmp_path, fmt
):
    run, _, _ = sigmoid_run
    (ckpt,) = (run / "checkpoints").glob("epoch*.ckpt")
    module = load_checkpoint(ckpt).eval()
    assert module.objective == "sigmoid"
    features = FeatureParams.from_mapping(module.hparams["features"])
    wav = write_tone(
        tmp_path / "tone.wav", 2 * features.clip_samples / features.sample_rate, features.sample_rate, 440.0
    )
    waveform = torch.from_numpy(sf.read(str(wav), dtype="float32")[0][: features.clip_samples])[None]
    with torch.no_grad():
        direct = torch.sigmoid(module.net(MelFrontEnd(features)(waveform)))[0]
    exported = export(compose_cfg("export", [f"ckpt_path={ckpt}", f"format={fmt}", "tta_semitones=[]"]))
    model, metadata = load_exported(exported)
    assert metadata["objective"] == "sigmoid" and "sigmoid" in metadata["output"]
    with torch.no_grad():
        torch.testing.assert_close(model(waveform)[0], direct, atol=1e-5, rtol=1e-4)
    overrides = [f"ckpt_path={ckpt}", f"inputs={wav}", "num_workers=1", "aggregation=mean", "hop_seconds=100"]
    overrides.append("tta_semitones=[]")  # the net's own scores, as the exported model gives them
    (row,) = predict(compose_cfg("predict", overrides))
    assert row["model_output"] == "sigmoid" and row["top1_score"] == pytest.approx(float(direct.max()), abs=1e-4)
    (wav.with_suffix(".txt")).write_text("flute\n")
    summary = evaluate_recordings(compose_cfg("evaluate_recordings", [*overrides, "threshold=0.5", "progress=false"]))[
        "test"
    ]
    assert summary["model_output"] == "sigmoid"
    per_class = {name: c["predicted"] for name, c in summary["per_class"].items()}
    assert per_class == {name: int(direct[i] > 0.5) for i, name in enumerate(module.class_names)}
    # make predominant's last step: both figures from the two run folders
    spec = importlib.util.spec_from_file_location(
        "summary", Path(__file__).parents[1] / "scripts/predominant_summary.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    solo = json.loads((run / "metrics.json").read_text())["test"]
    lines = script.summary(run, tmp_path).splitlines()
    assert f"micro F1 {summary['micro']['f1']:.3f}" in lines[0] and "mean of sigmoid scores" in lines[0]
    assert f"top-1 error {solo['top1_error']:.1%}" in lines[1] and lines[-1] == f"runs: {run} {tmp_path}"
    booted = evaluate_recordings(
        compose_cfg("evaluate_recordings", [*overrides, "threshold=0.5", "progress=false", "bootstrap=20"])
    )["test"]["bootstrap"]
    low, high = booted["lrap"]["interval"]
    interval = script.summary(run, tmp_path).splitlines()[1]
    assert interval.startswith("  95 % of 20 resamples of the test mixtures: micro F1 ")
    assert interval.endswith(f"LRAP {low:.3f}-{high:.3f}")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    saved["val"] = {"micro": {"f1": 0.5}, "lrap": 0.75, "n": 3}  # as with threshold=val: under the interval
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    lines = script.summary(run, tmp_path).splitlines()
    assert lines[1] == interval and lines[2] == "  validation mixtures: micro F1 0.500, LRAP 0.750"


def test_test_time_warps_follow_the_checkpoints_pitch_training_and_average_the_warped_windows(
    sigmoid_run, compose_cfg, tmp_path
):
    run, _, _ = sigmoid_run
    (ckpt,) = (run / "checkpoints").glob("epoch*.ckpt")
    module = load_checkpoint(ckpt).eval()
    assert module.hparams["augment"]["pitch_semitones"] == 2.0  # experiment=predominant
    features = FeatureParams.from_mapping(module.hparams["features"])
    wav = write_tone(tmp_path / "tone.wav", features.clip_samples / features.sample_rate, features.sample_rate, 440.0)
    waveform = torch.from_numpy(sf.read(str(wav), dtype="float32")[0][: features.clip_samples])[None]
    mel = MelFrontEnd(features)(waveform)  # (1, n_mels, frames), power
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    centres = mel_centres(features.as_dict())
    with torch.no_grad():
        by_warp = {
            s: torch.sigmoid(module.net(10 ** (warp_mel_axis(db, centres, torch.full((1, 1), s)) / 10)))[0]
            for s in (-2.0, -1.0, 0.0, 1.0, 2.0)
        }
    expected = torch.stack(list(by_warp.values())).mean(0)
    assert (by_warp[2.0] - by_warp[0.0]).abs().max() > 1e-4  # the warps change what the net answers
    base = [f"ckpt_path={ckpt}", f"inputs={wav}", "num_workers=1", "aggregation=mean", "hop_seconds=100"]
    scores = {}
    for option in ("auto", "[-2,-1,0,1,2]", "[]"):
        (row,) = predict(compose_cfg("predict", [*base, f"tta_semitones={option}"]))
        scores[option] = torch.tensor([row["scores"]["mean"][name] for name in module.class_names])
    torch.testing.assert_close(scores["auto"], expected, atol=2e-4, rtol=0)  # auto: -2, -1, 0, 1, 2 for +-2
    torch.testing.assert_close(scores["[-2,-1,0,1,2]"], scores["auto"], atol=0, rtol=0)
    torch.testing.assert_close(scores["[]"], by_warp[0.0], atol=2e-4, rtol=0)
    saved = json.loads((tmp_path / "predictions.json").read_text())[0]  # the last run's: tta_semitones=[]
    assert saved["tta_semitones"] == [] and row["tta_semitones"] == []
    for fmt in ("torch_export", "torchscript"):  # the exported model averages the same warps
        model, metadata = load_exported(export(compose_cfg("export", [f"ckpt_path={ckpt}", f"format={fmt}"])))
        assert metadata["tta_semitones"] == [-2.0, -1.0, 0.0, 1.0, 2.0] and "warped" in metadata["output"]
        with torch.no_grad():
            torch.testing.assert_close(model(waveform)[0], expected, atol=1e-5, rtol=1e-4)
            assert model(waveform.repeat(3, 1)).shape == (3, len(module.class_names))  # any batch size
    (wav.with_suffix(".txt")).write_text("flute\n")
    summary = evaluate_recordings(compose_cfg("evaluate_recordings", [*base, "threshold=0.5", "progress=false"]))
    assert summary["test"]["tta_semitones"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    with pytest.raises(AmirError, match="tta_semitones=often: expected auto"):
        predict(compose_cfg("predict", [*base, "tta_semitones=often"]))
    with pytest.raises(AmirError, match="beyond an octave"):
        predict(compose_cfg("predict", [*base, "tta_semitones=[0,24]"]))


def test_the_predominant_folds_table_reads_each_seeds_newest_runs_and_averages(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "folds", Path(__file__).parents[1] / "scripts/predominant_folds_table.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def write(task, val_err, val, test, solo, stamp="2026-02-01_00-00-00"):
        run = tmp_path / task / stamp
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / f"epoch011-val_err{val_err:.4f}.ckpt").touch()
        (run / "metrics.json").write_text(json.dumps({"test": {"top1_error": solo}}))
        scored = tmp_path / f"{task}_mixtures" / stamp
        scored.mkdir(parents=True)
        figures = {name: {"micro": {"f1": f1}, "lrap": lrap} for name, (f1, lrap) in (("val", val), ("test", test))}
        (scored / "metrics.json").write_text(json.dumps(figures))

    write("pfold_tim_seed12345", 0.99, (0, 0), (0, 0), 0.99, stamp="2026-01-01_00-00-00")  # older: not read
    write("pfold_tim_seed12345", 0.40, (0.50, 0.70), (0.60, 0.80), 0.30)
    write("pfold_tim_seed1", 0.44, (0.54, 0.66), (0.50, 0.70), 0.34)
    write("pfold_lmms_seed12345", 0.50, (0.40, 0.60), (0.45, 0.65), 0.40)
    write("pfold_lmms_seed1", 0.60, (0.44, 0.64), (0.55, 0.75), 0.50)
    text = script.table(["tim", "lmms"], ["12345", "1"], root=tmp_path)
    assert (
        "| `tim` | 42.0 % (40.0, 44.0) | 0.520 (0.500, 0.540) | 0.680 (0.700, 0.660) | 0.550 (0.600, 0.500) "
        "| 0.750 (0.800, 0.700) | 32.0 % (30.0, 34.0) |" in text
    )
    assert "| mean over the folds | 48.5 % | 0.470 | 0.650 | 0.525 | 0.725 | 38.5 % |" in text
    assert "(1 of 2 seeds)" in script.table(["tim"], ["12345", "7"], root=tmp_path)  # a seed not run is said
    partial = script.table(["tim", "fluid"], ["12345", "1"], root=tmp_path)
    assert "| `fluid` | not run |" in partial and "1 of 2 folds run" in partial
    write("pfold_tim_36ep_seed12345", 0.30, (0.6, 0.8), (0.7, 0.9), 0.2)  # LOFO_TAG=_36ep: its own runs
    assert "| `tim` | 30.0 % |" in script.table(["tim"], ["12345"], tag="_36ep", root=tmp_path)


def test_the_seed_mean_interval_script_averages_the_models_on_shared_draws_and_refuses_other_lists(
    tmp_path, monkeypatch, capsys
):
    spec = importlib.util.spec_from_file_location(
        "interval", Path(__file__).parents[1] / "scripts/seed_mean_interval.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def write(name, rows, classes="a,b,c"):
        report = tmp_path / name
        report.mkdir()
        lines = [f"split,file,labels,predicted,{classes}"] + [f"test,{f},{labels},,{s}" for f, labels, s in rows]
        (report / "per_file.csv").write_text("\n".join(lines) + "\n")
        return report

    def run(*argv):
        monkeypatch.setattr("sys.argv", ["seed_mean_interval.py", *map(str, argv)])
        script.main()
        return capsys.readouterr().out

    # model one misranks file y (c above its label b: LRAP 1/2), model two file x (c above a): each 0.75
    one = write("one", [("x", "a", "0.9,0.1,0.2"), ("y", "b", "0.1,0.3,0.8")])
    two = write("two", [("x", "a", "0.5,0.1,0.8"), ("y", "b", "0.1,0.8,0.3")])
    models = [script.read_scores(report, "test")[2:] for report in (one, two)]
    assert script.mean_lrap(models) == pytest.approx(0.75)
    assert script.mean_lrap(models, torch.tensor([0, 0])) == pytest.approx(0.75)  # x twice: 1 and 1/2
    # drawn together, every draw of the two files gives the mean 0.75: the interval has no width; drawn
    # apart (each model its own files) it would spread from 0.5 to 1
    assert "2 models, 2 files: mean LRAP 0.7500; 95 % of 200 resamples 0.750 to 0.750 (std 0.000), 0 % at 0.80" in run(
        one, two, "--resamples", "200"
    )
    alone = run(one, "--resamples", "400", "--target", "0.9")  # one model: x twice (1) in a quarter of the draws
    assert "1 models, 2 files: mean LRAP 0.7500; 95 % of 400 resamples 0.500 to 1.000" in alone
    assert 15 <= int(alone.split(" % at 0.90")[0].rsplit(" ", 1)[1]) <= 35
    # the difference from another model on the same draws: `perfect` ranks both files right (LRAP 1)
    perfect = write("perfect", [("x", "a", "0.9,0.1,0.2"), ("y", "b", "0.1,0.8,0.3")])
    paired = run(one, "--against", perfect, "--resamples", "400").splitlines()[1]
    assert paired.startswith(
        "against 1 models (mean LRAP 1.0000): difference -0.2500; 95 % of 400 resamples -0.500 to 0.000"
    )
    assert paired.endswith(", 0 % above 0")  # `one` is never better on any draw
    other = write("other", [("z", "a", "0.9,0.1,0.2"), ("y", "b", "0.1,0.3,0.8")])
    with pytest.raises(SystemExit, match="different files or classes"):
        run(one, other)
    with pytest.raises(SystemExit, match="different files or classes"):
        run(one, "--against", other)
    renamed = write("renamed", [("x", "a", "0.9,0.1,0.2"), ("y", "b", "0.1,0.3,0.8")], classes="a,b,d")
    with pytest.raises(SystemExit, match="different files or classes"):
        run(one, renamed)
    with pytest.raises(SystemExit, match="no files of split 'val'"):
        run(one, "--split", "val")
