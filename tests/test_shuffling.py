"""Per-clip shuffling: amir-prepare writes rows in random order, the trainer's batches mix classes
like a random draw, files from the older class-ordered writer are detected, and the silence gate
travels from the dataset file into the checkpoint."""

import itertools
import logging

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import FAST, TINY_CLASSES, TINY_FEATURES
from lightning.fabric.utilities.data import _set_sampler_epoch
from test_prepare import run_prepare, write_tone

from amir_pl.dataset.schema import DatasetWriter, read_info, write_synthetic
from amir_pl.features.params import FeatureParams, silence_gate
from amir_pl.inference.export import build
from amir_pl.inference.predict import predict
from amir_pl.training.data import H5DataModule, rows_grouped_by_class
from amir_pl.training.module import load_checkpoint
from amir_pl.training.train import train

CLASSES = ["electric_bass", "cello", "drums", "flute", "acoustic_guitar", "organ", "piano", "violin"]
CLIP = ["features.clip_seconds=0.75", "features.n_mels=32"]  # 32 x 33 clips: the order, not the features, is tested


@pytest.fixture(scope="module")
def class_ordered_source(tmp_path_factory):
    """8 class folders x 2 recordings of 15 s: amir-prepare meets them class by class, file by file."""
    root = tmp_path_factory.mktemp("ordered") / "recordings"
    for k, name in enumerate(CLASSES):
        for take in range(2):
            write_tone(root / name / f"take{take}.wav", 15.2, 22050, 110.0 * 2 ** (k / 2), seed=take)
    return root


def _prepare(compose_cfg, source, output, *overrides):
    return run_prepare(
        compose_cfg, source, output, "split_fractions={train: 1, val: 0, test: 0}", *CLIP, *overrides, classes=CLASSES
    )


def _distinct(labels: np.ndarray) -> float:
    return float(np.mean([len(set(batch)) for batch in labels]))


def test_prepared_class_ordered_source_gives_batches_mixed_like_a_random_draw(
    compose_cfg, class_ordered_source, tmp_path
):
    path = tmp_path / "shuffled.h5"
    _prepare(compose_cfg, class_ordered_source, path, "rms_threshold=0.02")
    assert not list(tmp_path.glob(".shuffled.h5*"))  # the staging file is gone
    with h5py.File(path, "r") as f:
        y, sources, offsets = f["train/y"][()], f["train/source"].asstr()[()], f["train/offset"][()]
        peak_band = f["train/x"][()].astype(np.float32).mean(axis=2).argmax(axis=1)
    n = len(y)
    assert n == 8 * 2 * 20
    # Labels, sources, offsets and spectra travel together: each row's label is its folder's class, each
    # recording keeps all its clip offsets, and each class's tone peaks in one mel band.
    assert [CLASSES[label] for label in y] == [source.split("/")[0] for source in sources]
    for source in set(sources):
        assert sorted(offsets[sources == source]) == pytest.approx([0.75 * i for i in range(20)], abs=1e-3)
    for label in range(8):
        assert len(set(peak_band[y == label])) == 1
    assert not rows_grouped_by_class(path, "train", 8)
    assert read_info(path).rms_threshold == 0.02

    # Batches of 16 read as runs of one chunk (8 clips) vs fully random batches of 16 from the same
    # labels: the mean number of distinct classes a batch holds must agree within 4 standard errors.
    dm = H5DataModule(str(path), batch_size=16, num_workers=0, seed=5, read_run=None)
    loader = dm.train_dataloader()
    assert loader.batch_sampler.run_length == 8
    observed = []
    for epoch in range(3):
        _set_sampler_epoch(loader, epoch)
        observed += [batch[1].numpy() for batch in loader]
    rng = np.random.default_rng(0)
    random_draws = [rng.choice(y, 16, replace=False) for _ in range(4000)]
    mean, std = _distinct(random_draws), np.std([len(set(b)) for b in random_draws])
    assert abs(_distinct(observed) - mean) <= 4 * std / np.sqrt(len(observed)), (_distinct(observed), mean)

    # The same recordings written class by class (as amir-prepare did before) hold about 1.5
    # classes per batch: the comparison above can tell the two apart.
    by_class = np.sort(y)
    assert _distinct([by_class[i : i + 16] for i in range(0, n, 16)]) < mean - 3


def test_prepare_is_seeded(compose_cfg, class_ordered_source, tmp_path):
    _prepare(compose_cfg, class_ordered_source, tmp_path / "a.h5")
    _prepare(compose_cfg, class_ordered_source, tmp_path / "b.h5")
    _prepare(compose_cfg, class_ordered_source, tmp_path / "c.h5", "seed=7")
    rows = {}
    for name in "abc":
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            rows[name] = f["train/y"][()], f["train/x"][()]
    assert np.array_equal(rows["a"][0], rows["b"][0]) and np.array_equal(rows["a"][1], rows["b"][1])
    assert not np.array_equal(rows["a"][0], rows["c"][0])


def test_file_grouped_by_class_is_read_one_clip_at_a_time(tmp_path, caplog):
    """A file from the older writer (rows class by class) still trains, with per-clip batches."""
    features = FeatureParams(n_mels=4, clip_samples=4 * 512)
    path = tmp_path / "old.h5"
    y = np.repeat(np.arange(6), 40)
    with DatasetWriter(path, [f"c{k}" for k in range(6)], features, dtype="float32", chunk_clips=8) as writer:
        writer.append(
            "train", np.zeros((len(y), 4, 5), np.float32), y, [f"f{i}" for i in range(len(y))], np.zeros(len(y))
        )
    assert rows_grouped_by_class(path, "train", 8)
    with caplog.at_level(logging.WARNING):
        loader = H5DataModule(str(path), batch_size=16, num_workers=0, read_run=None).train_dataloader()
    assert loader.batch_sampler.run_length == 1
    assert "grouped by class" in caplog.text and "amir-prepare" in caplog.text
    assert _distinct([batch[1].numpy() for batch in loader]) > 4  # 6 classes, batches of 16: ~5.9 at random
    # an explicit read_run on a shuffled file is taken as given
    shuffled = write_synthetic(
        tmp_path / "new.h5", {"train": 40}, class_names=[f"c{k}" for k in range(6)], features=features
    )
    assert (
        H5DataModule(str(shuffled), batch_size=16, num_workers=0, read_run=4)
        .train_dataloader()
        .batch_sampler.run_length
        == 4
    )


def _co_batched_pairs(batches) -> set:
    return {pair for batch in batches for pair in itertools.combinations(sorted(batch), 2)}


def test_per_clip_batches_pair_clips_anew_every_epoch(tmp_path):
    """``read_run=1`` (the default): two epochs share no more co-batched pairs than chance allows,
    where runs of 8 share every pair inside a run."""
    path = write_synthetic(
        tmp_path / "f.h5",
        {"train": 100},
        class_names=[f"c{k}" for k in range(6)],
        features=FeatureParams(n_mels=4, clip_samples=4 * 512),
    )
    n, batch_size = 600, 32

    def pairs_shared(**options):
        loader = H5DataModule(str(path), batch_size=batch_size, num_workers=0, **options).train_dataloader()
        epochs = []
        for epoch in (0, 1):
            _set_sampler_epoch(loader, epoch)
            epochs.append(_co_batched_pairs(list(loader.batch_sampler)))
        return len(epochs[0] & epochs[1]) / len(epochs[0])

    chance = (batch_size - 1) / (n - 1)  # probability that a given pair shares a batch in one epoch
    assert pairs_shared() < 1.5 * chance  # the default: single clips
    assert pairs_shared(read_run=8) > (8 - 1) / (batch_size - 1)  # the pairs inside a run are together every epoch


@pytest.mark.parametrize("experiment", [None, "paper", "quickstart"])
def test_default_thesis_and_quickstart_recipes_shuffle_single_clips(compose_cfg, experiment):
    cfg = compose_cfg("train", ["data.path=x.h5", *([f"experiment={experiment}"] if experiment else [])])
    assert cfg.data.read_run == 1


def test_silence_gate_travels_from_the_dataset_file_to_predict_and_export(compose_cfg, tmp_path):
    data = write_synthetic(
        tmp_path / "gated.h5",
        {"train": 4, "val": 2},
        class_names=TINY_CLASSES,
        features=TINY_FEATURES,
        rms_threshold=0.05,
    )
    cfg = compose_cfg("train", [f"data.path={data}", *FAST, "trainer.max_epochs=1", "logger=csv", "test_splits=[]"])
    train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt).hparams["features"]["rms_threshold"] == 0.05
    quiet = tmp_path / "audio" / "quiet.wav"  # mean frame RMS about 0.03: silent under 0.05, heard under 0.01
    quiet.parent.mkdir()
    t = np.arange(22050 * 2) / 22050
    sf.write(str(quiet), (0.042 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)

    def status(*overrides):
        rows = predict(compose_cfg("predict", [f"ckpt_path={ckpt}", f"inputs={quiet}", "num_workers=1", *overrides]))
        return rows[0]["status"]

    assert status() == "silent"
    assert status("rms_threshold=0.01") == "ok"
    assert build(ckpt)[1]["rms_threshold"] == 0.05
    assert build(ckpt, rms_threshold=0.02)[1]["rms_threshold"] == 0.02
    assert silence_gate(None, {}) == 0.01  # a checkpoint from before the gate was stored
