import csv
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FAST

from amir_pl.core.errors import AmirError
from amir_pl.dataset.prepare import prepare
from amir_pl.dataset.schema import read_info
from amir_pl.features.audio import RESAMPLING, MelFrontEnd, frame_rms, probe, read_clips, resample
from amir_pl.features.params import FeatureParams

CLASSES = ["cello", "flute", "piano"]
FOLDERS = {"cel": 110.0, "flu": 880.0, "piano": 261.6}  # IRMAS codes and a plain name


def write_tone(path, seconds, sample_rate=44100, freq=440.0, channels=1, subtype="PCM_16", amplitude=0.3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    y = amplitude * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))
    data = np.stack([y * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else y
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sample_rate, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def audio_tree(tmp_path_factory):
    """Three classes x 6 recordings (7-9 s; mono and stereo, 44.1/48/22.05 kHz), plus bad files."""
    root = tmp_path_factory.mktemp("audio") / "recordings"
    formats = [
        (44100, 1, "PCM_16", ".wav"),
        (44100, 2, "PCM_16", ".wav"),
        (48000, 1, "PCM_24", ".flac"),
        (22050, 1, "FLOAT", ".wav"),
        (44100, 2, "PCM_24", ".wav"),
        (48000, 2, "PCM_16", ".ogg"),
    ]
    for folder, freq in FOLDERS.items():
        for i, (rate, channels, subtype, ext) in enumerate(formats):
            subtype = "VORBIS" if ext == ".ogg" else subtype
            write_tone(
                root / folder / f"take{i}{ext}", 7 + i % 3, rate, freq * (1 + 0.05 * i), channels, subtype, seed=i
            )
    bad = root / "piano" / "bad"
    bad.mkdir(parents=True)
    sf.write(str(bad / "silence.wav"), np.zeros(44100 * 4, np.float32), 44100)
    (bad / "notes.wav").write_text("this is a text file named .wav")
    whole = write_tone(bad / "truncated.wav", 6).read_bytes()
    (bad / "truncated.wav").write_bytes(whole[:30])  # cut inside the header
    cut = write_tone(bad / "cut_short.wav", 9, seed=3).read_bytes()
    (bad / "cut_short.wav").write_bytes(cut[: len(cut) // 2])  # header says 9 s, data stops at 4.5 s
    write_tone(bad / "short.wav", 1.5)
    sf.write(str(bad / "empty.wav"), np.zeros((0,), np.float32), 44100)
    nan = np.sin(np.arange(44100 * 4) / 10).astype(np.float32) * 0.3
    nan[1000:1100] = np.nan
    sf.write(str(bad / "with_nan.wav"), nan, 44100, subtype="FLOAT")
    write_tone(root / "cla" / "clarinet.wav", 6)  # IRMAS clarinet: not in the class list
    write_tone(root / "flu" / "rates" / "8k.wav", 4, sample_rate=8000, freq=700, subtype="PCM_U8")
    write_tone(root / "flu" / "rates" / "96k.wav", 4, sample_rate=96000, freq=900, subtype="PCM_24")
    return root


def run_prepare(compose_cfg, source, output, *overrides, classes=CLASSES):
    cfg = compose_cfg(
        "prepare",
        [
            f"source={source}",
            f"output={output}",
            f"classes=[{','.join(classes)}]",
            "progress=false",
            "num_workers=1",
            *overrides,
        ],
    )
    return prepare(cfg)


def _split_sources(path):
    with h5py.File(path, "r") as f:
        return {split: {s.decode() for s in f[split]["source"][()]} for split in f if split in ("train", "val", "test")}


def test_tree_to_dataset_labels_splits_and_report(compose_cfg, audio_tree, tmp_path):
    output = tmp_path / "set.h5"
    report = run_prepare(compose_cfg, audio_tree, output)
    info = read_info(output)
    assert info.class_names == tuple(CLASSES) and info.input_shape == (128, 130)
    assert info.dtype == np.float16
    with h5py.File(output, "r") as f:
        for split in info.splits:
            sources = [s.decode() for s in f[split]["source"][()]]
            labels = f[split]["y"][()]
            offsets = f[split]["offset"][()]
            for source, label, offset in zip(sources, labels, offsets):
                folder = source.split("/")[0]
                expected = {"cel": "cello", "flu": "flute", "piano": "piano"}[folder]
                assert CLASSES[label] == expected, source
                assert offset % 3.0 == 0
    # splits by recording: no file in two splits
    sources = _split_sources(output)
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"])
    assert not (sources["val"] & sources["test"])
    assert set(info.splits) == {"train", "val", "test"}
    # each bad file has one line with its reason
    reasons = {item["file"]: item["reason"] for item in report["skipped"]}
    assert "not readable audio" in reasons["piano/bad/notes.wav"]
    assert (
        "not readable audio" in reasons["piano/bad/truncated.wav"] or "no samples" in reasons["piano/bad/truncated.wav"]
    )
    assert "shorter than one clip" in reasons["piano/bad/short.wav"]
    assert "piano/bad/empty.wav" in reasons
    assert reasons["piano/bad/silence.wav"].startswith("silent")
    assert "NaN/Inf samples set to 0" in reasons["piano/bad/with_nan.wav"]
    # a file cut short after its header: its readable clips are kept or it is reported, never a crash
    assert "piano/bad/cut_short.wav" in reasons or any("cut_short" in s for s in set().union(*sources.values()))
    assert "not in classes" in reasons["clarinet"]
    saved = json.loads((tmp_path / "prepare_report.json").read_text())
    assert saved["class_counts"] == report["class_counts"]
    assert sum(saved["clips"].values()) == sum(info.splits.values())
    assert "flu/rates/8k.wav" in set().union(*sources.values())  # 8 kHz, 8-bit
    assert "flu/rates/96k.wav" in set().union(*sources.values())


def test_same_dataset_whatever_num_workers(compose_cfg, audio_tree, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    run_prepare(compose_cfg, audio_tree, one, "num_workers=1", "clips_per_task=1")
    run_prepare(compose_cfg, audio_tree, two, "num_workers=2", "clips_per_task=2")
    with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
        for split in ("train", "val", "test"):
            for name in ("x", "y", "source", "offset"):
                assert np.array_equal(a[split][name][()], b[split][name][()]), (split, name)


def test_clip_level_gate_and_features_match_librosa(tmp_path):
    librosa = pytest.importorskip("librosa")
    path = write_tone(tmp_path / "tone.wav", 7, sample_rate=44100, freq=440.0, channels=2)
    features = FeatureParams()
    ours = torch.cat([block.clips for block in read_clips(probe(path), features)])
    assert ours.shape == (2, 66150)  # 7 s -> two 3 s clips, the tail dropped
    reference, _ = librosa.load(str(path), sr=22050)  # mono, soxr_hq
    difference = ours.reshape(-1).numpy() - reference[: 2 * 66150]
    relative_rms = np.sqrt(np.mean(difference**2) / np.mean(reference[: 2 * 66150] ** 2))
    print(f"resampling vs librosa: relative RMS difference {relative_rms:.2e}, max {np.abs(difference).max():.2e}")
    assert relative_rms < 0.01
    clip = reference[:66150]
    expected = librosa.feature.melspectrogram(y=clip, sr=22050, n_mels=128)
    mel = MelFrontEnd(features)(torch.from_numpy(clip)[None])[0].numpy()
    assert mel.shape == expected.shape == (128, 130)
    assert np.abs(mel - expected).max() <= 1e-3 * expected.max()
    ours_end_to_end = MelFrontEnd(features)(ours[:1])[0].numpy()
    assert np.abs(ours_end_to_end - expected).max() <= 1e-3 * expected.max()
    db = MelFrontEnd(FeatureParams(scale="db"))(torch.from_numpy(clip)[None])[0].numpy()
    assert np.abs(db - librosa.power_to_db(expected)).max() < 1e-2
    rms = librosa.feature.rms(y=clip).mean()
    assert frame_rms(torch.from_numpy(clip)[None]).item() == pytest.approx(rms, rel=1e-5)
    odd = librosa.feature.rms(y=clip, frame_length=1000, hop_length=300).mean()  # frames not whole hops
    assert frame_rms(torch.from_numpy(clip)[None], 1000, 300).item() == pytest.approx(odd, rel=1e-5)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_decoded_mono_equals_soundfiles_float_samples(tmp_path, subtype):
    # 16-bit files are read as integers and scaled by amir-pl itself: the same float32 samples.
    path = write_tone(tmp_path / "tone.wav", 1, sample_rate=22050, freq=440.0, channels=3, subtype=subtype)
    ours = torch.cat([block.clips for block in read_clips(probe(path), FeatureParams(clip_samples=11025))])
    channels, _ = sf.read(str(path), dtype="float32", always_2d=True)
    expected = (channels[:, 0] + channels[:, 1] + channels[:, 2]) / 3
    assert torch.equal(ours.reshape(-1), torch.from_numpy(expected[:22050]))


@pytest.mark.parametrize("orig", [8000, 11025, 16000, 44100, 48000, 88200, 96000])
def test_resample_equals_torchaudio(orig):
    import torchaudio

    waveforms = torch.randn(3, 2 * orig + 7, generator=torch.Generator().manual_seed(orig))
    expected = torchaudio.transforms.Resample(orig, 22050, **RESAMPLING)(waveforms)
    got = resample(waveforms, orig, 22050)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(resample(waveforms[0], orig, 22050), expected[0], rtol=0, atol=1e-5)  # 1-D too
    assert resample(waveforms, 22050, 22050) is waveforms


def test_blockwise_resampling_equals_whole_file(tmp_path):
    path = write_tone(tmp_path / "long.wav", 31, sample_rate=48000, freq=523.0)
    features = FeatureParams()
    one_block = torch.cat([b.clips for b in read_clips(probe(path), features, block_clips=100)])
    small_blocks = torch.cat([b.clips for b in read_clips(probe(path), features, block_clips=1)])
    middle = torch.cat([b.clips for b in read_clips(probe(path), features, first_clip=4, n_clips=3)])
    assert one_block.shape == (10, 66150)
    torch.testing.assert_close(small_blocks, one_block, atol=1e-6, rtol=0)
    torch.testing.assert_close(middle, one_block[4:7], atol=1e-6, rtol=0)


def test_manifest_with_splits_and_db_float32(compose_cfg, audio_tree, tmp_path):
    manifest = tmp_path / "list.csv"
    rows = [
        ("cel/take0.wav", "cello", "train"),
        ("cel/take1.wav", "cel", "test"),
        ("flu/take0.wav", "Flute", "train"),
        ("piano/take2.flac", "piano", "val"),
        ("piano/take3.wav", "piano", "train"),
    ]
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows((str(audio_tree / p), label, split) for p, label, split in rows)
    output = tmp_path / "m.h5"
    run_prepare(compose_cfg, manifest, output, "features.scale=db", "dtype=float32")
    info = read_info(output)
    assert info.features.scale == "db" and info.dtype == np.float32
    sources = _split_sources(output)
    assert {s.rsplit("/", 2)[-2] + "/" + s.rsplit("/", 1)[-1] for s in sources["test"]} == {"cel/take1.wav"}
    assert len(sources["val"]) == 1 and len(sources["train"]) == 3


def test_split_folders_and_balance(compose_cfg, tmp_path):
    root = tmp_path / "split_tree"
    for split, n in (("train", 3), ("test", 1)):
        for folder, freq in FOLDERS.items():
            for i in range(n + (folder == "cel")):  # cello has more recordings
                write_tone(root / split / folder / f"{i}.wav", 6 + 3 * (folder == "cel"), freq=freq, seed=i)
    unbalanced = run_prepare(compose_cfg, root, tmp_path / "u.h5")
    assert unbalanced["class_counts"]["train"]["cello"] > unbalanced["class_counts"]["train"]["flute"]
    balanced = run_prepare(compose_cfg, root, tmp_path / "b.h5", "balance=true")
    for split, counts in balanced["class_counts"].items():
        assert len(set(counts.values())) == 1, (split, counts)
    info = read_info(tmp_path / "b.h5")
    assert info.splits == {split: sum(c.values()) for split, c in balanced["class_counts"].items()}
    assert not list(tmp_path.glob(".*unbalanced*"))


def test_refusals(compose_cfg, audio_tree, tmp_path):
    output = tmp_path / "exists.h5"
    output.write_text("keep me")
    with pytest.raises(AmirError, match="exists; add overwrite=true"):
        run_prepare(compose_cfg, audio_tree, output)
    assert output.read_text() == "keep me"
    with pytest.raises(AmirError, match="no such file or folder"):
        run_prepare(compose_cfg, tmp_path / "nowhere", tmp_path / "x.h5")
    silent_only = tmp_path / "silent" / "cello"
    silent_only.mkdir(parents=True)
    sf.write(str(silent_only / "quiet.wav"), np.zeros(44100 * 7, np.float32), 44100)
    with pytest.raises(AmirError, match="no usable clips"):
        run_prepare(compose_cfg, tmp_path / "silent", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.h5*"))


@pytest.mark.slow
def test_killed_run_leaves_no_output_then_console_script_and_training_work(audio_tree, tmp_path):
    from conftest import run_console_script

    long_root = tmp_path / "long"
    for folder, freq in FOLDERS.items():
        write_tone(long_root / folder / "a.wav", 240, sample_rate=48000, freq=freq)
    output = tmp_path / "killed.h5"
    script = os.path.join(os.path.dirname(sys.executable), "amir-prepare")
    process = subprocess.Popen(
        [
            script,
            f"source={long_root}",
            f"output={output}",
            "num_workers=1",
            f"classes=[{','.join(CLASSES)}]",
            f"hydra.run.dir={tmp_path / 'run_killed'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    # kill as soon as a temporary file exists: the whole job takes about a second on an idle machine
    while not list(tmp_path.glob(".*killed.h5.*")) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed while running, not after finishing
    assert not output.exists()

    dataset = tmp_path / "ok.h5"
    result = run_console_script(
        "amir-prepare",
        f"source={audio_tree}",
        f"output={dataset}",
        f"classes=[{','.join(CLASSES)}]",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run_ok'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prepare_report.json" in result.stdout and (tmp_path / "run_ok" / "prepare_report.json").is_file()
    result = run_console_script(
        "amir-train",
        f"data.path={dataset}",
        *FAST,
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'train'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["test"]["n"] > 0
