"""The DataModule's life around the Trainer: handles closed at teardown, more ranks than
evaluation clips, and the memory check of a cache that every local rank loads."""

import json
import os
from types import SimpleNamespace

import h5py
import lightning as L
import numpy as np
import psutil
import pytest
import torch
from conftest import FAST, TINY_CLASSES, TINY_FEATURES, run_console_script
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from amir_pl.dataset.schema import DatasetWriter, write_synthetic
from amir_pl.features.params import FeatureParams
from amir_pl.training.data import CachedSplit, ContiguousBatchSampler, H5ClipDataset, H5DataModule
from amir_pl.training.module import AmirModule

SMALL = FeatureParams(n_mels=4, clip_samples=4 * 512)  # 4 x 5 float32 clips: 80 bytes each


def _open_files(path) -> list:
    """The HDF5 file ids open in this process on ``path``."""
    target = os.path.realpath(path)
    return [
        fid for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE) if os.path.realpath(fid.name.decode()) == target
    ]


def _module(info) -> AmirModule:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="amir_pl.conf", version_base="1.3"):
        cfg = compose("train", ["data.path=unused"])
    GlobalHydra.instance().clear()
    return AmirModule(
        net=cfg.model,
        optimizer=cfg.optimizer,
        class_names=info.class_names,
        features=info.features.as_dict(),
        input_shape=info.input_shape,
    )


class _OpenFilesSeen(L.Callback):
    """Records how many handles on the file are open while batches run (the check must see some)."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_train_batch_end(self, *args):
        self.seen.append(len(_open_files(self.path)))

    def on_test_batch_end(self, *args):
        self.seen.append(len(_open_files(self.path)))


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_teardown_closes_the_files_and_drops_the_cache_and_later_stages_reopen(tmp_path, cache):
    path = write_synthetic(
        tmp_path / "life.h5",
        {"train": 4, "val": 2, "test": 2},
        class_names=TINY_CLASSES,
        features=TINY_FEATURES,
        seed=2,
    )
    dm = H5DataModule(str(path), batch_size=8, num_workers=0, cache=cache)
    module = _module(dm.info)
    seen = _OpenFilesSeen(path)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[seen],
    )
    trainer.fit(module, datamodule=dm)
    # the trainer (and through it the loaders and datasets) is still alive: only teardown closes
    assert _open_files(path) == [] and dm._cached == {}
    trainer.test(module, datamodule=dm, verbose=False)
    assert _open_files(path) == [] and dm._cached == {}
    if cache == "none":
        assert max(seen.seen) > 0  # streaming did hold the file open while batches ran
    # a later stage after teardown reopens what it needs
    trainer.test(module, datamodule=dm, verbose=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    assert int(module.results["test"]["confusion_matrix"].sum()) == 2 * len(TINY_CLASSES)
    assert int(module.results["val"]["confusion_matrix"].sum()) == 2 * len(TINY_CLASSES)
    assert _open_files(path) == []


def test_a_closed_dataset_reopens_on_the_next_read(tmp_path):
    path = write_synthetic(tmp_path / "reopen.h5", 2, class_names=TINY_CLASSES, features=TINY_FEATURES)
    dataset = H5ClipDataset(path, "train", 2 * len(TINY_CLASSES))
    first = dataset[3][0]
    assert len(_open_files(path)) == 1
    dataset.close()
    assert _open_files(path) == []
    assert torch.equal(dataset[3][0], first)


# --- more ranks than evaluation clips -------------------------------------------------------------


@pytest.mark.parametrize(("length", "world"), [(3, 5), (1, 2), (0, 1), (5, 5)])
def test_fewer_clips_than_ranks_leaves_the_last_ranks_an_empty_shard(length, world):
    seen = []
    for rank in range(world):
        sampler = ContiguousBatchSampler(length, 2, rank=rank, num_replicas=world)
        batches = list(sampler)
        assert len(batches) == len(sampler) >= 1  # every rank runs the loop and reaches compute()
        clips = [i for batch in batches for i in batch]
        assert clips == ([rank] if rank < length else [])  # the clips go to the first ranks
        seen += clips
    assert seen == list(range(length))


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_an_empty_shard_yields_an_empty_batch_of_the_right_shape(tmp_path, cache):
    path = write_synthetic(tmp_path / "one.h5", {"train": 1, "test": 1}, class_names=("a", "b", "c"), features=SMALL)
    dm = H5DataModule(str(path), batch_size=4, num_workers=0, cache=cache)
    dm.trainer = _fake_trainer(rank=3, world=4, local=4)  # 3 test clips, 4 ranks: rank 3 has none
    ((x, y),) = list(dm.test_dataloader())
    assert x.shape == (0, 4, 5) and x.dtype == torch.float16 and y.shape == (0,) and y.dtype == torch.int64


def _write_one_clip_splits(path):
    """A tiny file whose val and test splits hold one clip each."""
    rng = np.random.default_rng(0)
    with DatasetWriter(path, TINY_CLASSES, TINY_FEATURES) as writer:
        for split, n in (("train", 4 * len(TINY_CLASSES)), ("val", 1), ("test", 1)):
            y = np.arange(n) % len(TINY_CLASSES)
            x = rng.random((n, TINY_FEATURES.n_mels, TINY_FEATURES.frames), dtype=np.float32)
            writer.append(split, x, y, [f"{split}{i}.wav" for i in range(n)], np.zeros(n))
    return path


@pytest.mark.slow
def test_ddp_scores_a_one_clip_split_on_one_of_two_ranks(tmp_path):
    data = _write_one_clip_splits(tmp_path / "one_clip.h5")
    run_dir = tmp_path / "ddp_run"
    result = run_console_script(
        "amir-train",
        f"data.path={data}",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        *FAST,
        "trainer.max_epochs=1",
        "logger=csv",
        "test_splits=[val,test]",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["n"] == 1
        assert sum(map(sum, metrics[split]["confusion_matrix"])) == 1


# --- data.cache=memory on several local ranks ----------------------------------------------------


def _fake_trainer(rank=0, world=1, local=1, agree=True):
    """What H5DataModule reads of a Trainer: ranks, devices on this node, the strategy."""
    strategy = SimpleNamespace(
        root_device=torch.device("cpu"), reduce_boolean_decision=lambda decision, all=True: decision and agree
    )
    return SimpleNamespace(global_rank=rank, world_size=world, num_devices=local, strategy=strategy)


@pytest.fixture
def clips_file(tmp_path):
    path = tmp_path / "clips.h5"
    with DatasetWriter(path, ["a", "b"], SMALL, dtype="float32") as writer:
        writer.append("val", np.zeros((100, 4, 5)), np.arange(100) % 2, ["s"] * 100, np.zeros(100))
        writer.append("train", np.zeros((100, 4, 5)), np.arange(100) % 2, ["s"] * 100, np.zeros(100))
    return path


SPLIT_BYTES = 100 * 4 * 5 * 4


@pytest.mark.parametrize(
    ("local", "world", "free_copies", "agree", "cached"),
    [
        (1, 1, 3, True, True),  # one rank, room for 3 copies
        (8, 8, 3, True, False),  # 8 ranks on this node each load one: 8 copies do not fit in room for 3
        (8, 8, 9, True, True),
        (1, 8, 3, True, True),  # 8 nodes with one rank each: one copy per node
        (1, 2, 3, False, False),  # another rank lacks the room: every rank streams (same training order)
    ],
)
def test_memory_cache_checks_room_for_every_local_rank(
    clips_file, monkeypatch, caplog, local, world, free_copies, agree, cached
):
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=free_copies * SPLIT_BYTES))
    dm = H5DataModule(str(clips_file), batch_size=10, num_workers=0, cache="memory", cache_max_fraction=1.0)
    dm.trainer = _fake_trainer(world=world, local=local, agree=agree)
    loader = dm.val_dataloader()
    assert isinstance(loader.dataset, CachedSplit if cached else H5ClipDataset)
    if not cached:
        assert "streaming it from the file instead" in caplog.text
