import h5py
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from amir_pl.dataset.schema import DatasetFileError, DatasetWriter, read_info
from amir_pl.features.params import FeatureParams
from amir_pl.training.data import (
    CachedSplit,
    ContiguousBatchSampler,
    H5ClipDataset,
    H5DataModule,
    ShuffledRunBatchSampler,
)

FEATURES = FeatureParams(n_mels=4, clip_samples=4 * 512)  # 4 x 5 clips: the content is the test here
N_TRAIN, N_VAL = 203, 37  # not multiples of anything


@pytest.fixture(scope="module")
def indexed_h5(tmp_path_factory):
    """A file whose clip i is filled with the value i, so every batch says which clips it holds."""
    path = tmp_path_factory.mktemp("indexed") / "indexed.h5"
    with DatasetWriter(path, ["a", "b", "c"], FEATURES, dtype="float32", chunk_clips=8) as writer:
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            ids = np.arange(n, dtype=np.float32)
            x = np.broadcast_to(ids[:, None, None], (n, 4, 5)).copy()
            writer.append(split, x, np.arange(n) % 3, [f"f{i}.wav" for i in range(n)], np.zeros(n))
    return path


def _clip_ids(batches) -> list[int]:
    ids = []
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.all(x == x[:, :1, :1])  # each clip read whole, not mixed with another
        batch_ids = x[:, 0, 0].long()
        assert torch.equal(y, batch_ids % 3)  # labels travel with their clips
        ids += batch_ids.tolist()
    return ids


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_clip_exactly_once_per_epoch_and_reshuffled(indexed_h5, num_workers):
    dm = H5DataModule(str(indexed_h5), batch_size=16, num_workers=num_workers, seed=3, persistent_workers=True)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop calls at each epoch start
        epochs.append(_clip_ids(loader))
        assert sorted(epochs[-1]) == list(range(N_TRAIN))
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert _clip_ids(dm.val_dataloader()) == list(range(N_VAL))


def test_shuffle_is_seeded():
    def order(seed):
        sampler = ShuffledRunBatchSampler(100, 10, run_length=4, seed=seed)
        sampler.set_epoch(2)
        return list(sampler)

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_two_ranks_read_disjoint_equal_training_shards():
    length, world = 203, 2
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = ShuffledRunBatchSampler(length, 16, run_length=8, seed=0, rank=rank, num_replicas=world)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            shards.append([i for batch in batches for i in batch])
        assert len(shards[0]) == len(shards[1]) == length // world  # equal: DDP ranks step in lockstep
        assert not set(shards[0]) & set(shards[1])
        assert len(set(shards[0] + shards[1])) == length - length % world


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shards_cover_every_clip_once_without_padding(world):
    seen = []
    for rank in range(world):
        sampler = ContiguousBatchSampler(37, 8, rank=rank, num_replicas=world)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen += [i for batch in batches for i in batch]
    assert seen == list(range(37))


def test_training_batches_are_runs_of_consecutive_clips(indexed_h5, monkeypatch):
    """A batch of 16 from runs of 8 costs at most 3 contiguous HDF5 reads, not 16."""
    calls = []
    original = h5py.Dataset.read_direct

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "read_direct", counting)
    dm = H5DataModule(str(indexed_h5), batch_size=16, num_workers=0, read_run=8)
    n_batches = 0
    for _batch in dm.train_dataloader():
        n_batches += 1
    assert n_batches == -(-N_TRAIN // 16)
    assert len(calls) <= 3 * n_batches
    calls.clear()
    list(dm.val_dataloader())
    assert len(calls) == -(-N_VAL // 16)  # evaluation: one read per batch


def test_getitems_keeps_the_requested_order(indexed_h5):
    dataset = H5ClipDataset(indexed_h5, "train", N_TRAIN)
    x, y = dataset.__getitems__([9, 3, 4, 5, 200, 3])
    assert x[:, 0, 0].long().tolist() == [9, 3, 4, 5, 200, 3]
    assert y.tolist() == [0, 0, 1, 2, 2, 0]
    clip, label = dataset[7]
    assert clip.shape == (4, 5) and int(clip[0, 0]) == 7 and int(label) == 1


def test_dataset_pickles_without_an_open_file(indexed_h5):
    import pickle

    dataset = H5ClipDataset(indexed_h5, "train", N_TRAIN)
    dataset[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None
    assert int(clone[5][0][0, 0]) == 5


def test_float16_file_stays_float16_until_the_model(tiny_h5):
    dm = H5DataModule(str(tiny_h5), batch_size=8, num_workers=0)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float16 and x.shape == (8, 32, 33)


# --- malformed files -------------------------------------------------------------------------


def _copy_with(tmp_path, source, edit):
    import shutil

    path = tmp_path / "bad.h5"
    shutil.copy(source, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _resize_x(f):
    del f["train/x"]
    f["train"].create_dataset("x", data=np.zeros((len(f["train/y"]), 4, 6), "float32"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.attrs.__setitem__("schema", "other/2"), r"attribute 'schema' is 'other/2', expected 'amir-pl/1'"),
        (lambda f: f.attrs.__delitem__("hop_length"), "missing root attribute.*hop_length"),
        (lambda f: f.attrs.__setitem__("scale", "log"), "'scale' is 'log', expected 'power' or 'db'"),
        (_resize_x, r"'train/x' has shape \(203, 4, 6\), expected \(N, 4, 5\)"),
        (lambda f: f["val/y"].__setitem__(0, 7), r"'val/y' holds labels 0..7, expected 0..2"),
        (lambda f: f.__delitem__("train/source"), "dataset 'train/source' is missing"),
        (lambda f: [f.__delitem__(split) for split in ("train", "val")], "no split group"),
    ],
)
def test_malformed_file_is_refused_with_a_clear_message(tmp_path, indexed_h5, edit, message):
    bad = _copy_with(tmp_path, indexed_h5, edit)
    with pytest.raises(DatasetFileError, match=message) as caught:
        read_info(bad)
    assert str(bad) in str(caught.value)


def test_not_hdf5_and_missing_file(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DatasetFileError, match="not a readable HDF5 file"):
        read_info(text)
    with pytest.raises(DatasetFileError, match="no such file"):
        read_info(tmp_path / "absent.h5")


def test_writer_leaves_nothing_at_the_output_path_on_failure(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with DatasetWriter(path, ["a"], FEATURES) as writer:
            writer.append("train", np.zeros((2, 4, 5)), [0, 0], ["s", "s"], [0.0, 3.0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with DatasetWriter(path, ["a"], FEATURES) as writer:
        writer.append("train", np.zeros((2, 4, 5)), [0, 0], ["s", "s"], [0.0, 3.0])
    assert read_info(path).splits == {"train": 2}
    with pytest.raises(FileExistsError):
        DatasetWriter(path, ["a"], FEATURES)


@pytest.mark.parametrize("cache", ["memory", "device"])  # device is the CPU here: the same code path
def test_cached_split_gives_the_same_clips_without_reading_the_file(indexed_h5, cache, monkeypatch):
    streamed = H5DataModule(str(indexed_h5), batch_size=16, num_workers=0, seed=3, read_run=None)
    cached = H5DataModule(str(indexed_h5), batch_size=16, num_workers=0, seed=3, cache=cache, read_run=None)
    loader = cached.train_dataloader()
    assert isinstance(loader.dataset, CachedSplit)
    monkeypatch.setattr(h5py.Dataset, "read_direct", lambda *a, **k: pytest.fail("read from the file"))
    ids = _clip_ids(loader)
    assert sorted(ids) == list(range(N_TRAIN))
    # cached training batches are fully random (runs of 1), unlike the streamed runs of a chunk
    assert loader.batch_sampler.run_length == 1 and streamed.train_dataloader().batch_sampler.run_length > 1
    monkeypatch.undo()
    assert _clip_ids(cached.val_dataloader()) == list(range(N_VAL))


def test_cache_that_does_not_fit_streams_instead(indexed_h5, monkeypatch, caplog):
    import amir_pl.training.data as data

    monkeypatch.setattr(data, "cache_fits", lambda nbytes, device, fraction: (False, 1000))
    dm = H5DataModule(str(indexed_h5), batch_size=16, num_workers=0, cache="memory")
    assert isinstance(dm.train_dataloader().dataset, H5ClipDataset)
    assert "streaming it from the file instead" in caplog.text
    with pytest.raises(DatasetFileError, match="data.cache='gpu'"):
        H5DataModule(str(indexed_h5), cache="gpu")
