import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_prepare import write_tone

from amir_pl.core.errors import AmirError
from amir_pl.features.audio import MelFrontEnd, frame_rms, probe, read_clips
from amir_pl.features.params import FeatureParams
from amir_pl.inference.predict import Scorer, _batch_size, aggregate, last_level_cache_bytes, predict
from amir_pl.inference.tta import tta_warps, warped_views
from amir_pl.training.augment import mel_centres
from amir_pl.training.module import load_checkpoint


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_audio")
    return {
        "half_second": write_tone(root / "half.wav", 0.5, 44100, 330.0),  # shorter than the tiny model's window
        "one_second": write_tone(root / "one.wav", 1.0, 44100, 330.0),
        "three_seconds": write_tone(root / "three.flac", 3.0, 44100, 440.0, channels=2, subtype="PCM_24"),
        "ten_seconds_16k": write_tone(root / "folder" / "ten.wav", 10.0, 16000, 220.0),
        "stereo_44k": write_tone(root / "folder" / "deep" / "stereo.wav", 6.0, 44100, 550.0, channels=2),
    }


def run_predict(compose_cfg, checkpoint, inputs, *overrides):
    cfg = compose_cfg("predict", [f"ckpt_path={checkpoint}", f"inputs={inputs}", "num_workers=1", *overrides])
    return predict(cfg)


def test_any_length_rate_and_channels_and_outputs(compose_cfg, checkpoint, audio_files, tmp_path):
    folder = audio_files["ten_seconds_16k"].parent
    inputs = f"[{audio_files['half_second']},{audio_files['one_second']},{audio_files['three_seconds']},{folder}]"
    rows = run_predict(compose_cfg, checkpoint, inputs, "top_k=2")
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert set(by_name) == {"half.wav", "one.wav", "three.flac", "ten.wav", "stereo.wav"}  # folder searched recursively
    assert all(row["status"] == "ok" and row["top1"] and len(row["top_k"]) == 2 for row in rows)
    assert by_name["half.wav"]["padded"] and by_name["half.wav"]["windows_used"] == 1
    assert not by_name["one.wav"]["padded"] and by_name["one.wav"]["windows_used"] == 1
    assert not by_name["ten.wav"]["padded"]
    window, hop = 16384 / 22050, 1.5
    assert by_name["ten.wav"]["windows_used"] == int((10.0 - window) // hop) + 1
    assert by_name["ten.wav"]["duration_s"] == pytest.approx(10.0)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert [row["file"] for row in saved] == [row["file"] for row in rows]
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("file,duration_s,windows_used,silent_windows,padded,status,top1") and len(lines) == 6


@pytest.mark.parametrize("batch_size", ["auto", "3"])
def test_long_file_equals_the_mean_of_its_windows_computed_directly(compose_cfg, checkpoint, audio_files, batch_size):
    path = audio_files["ten_seconds_16k"]
    rows = run_predict(
        compose_cfg,
        checkpoint,
        str(path),
        "timeline=true",
        "hop_seconds=0.5",
        "num_workers=2",
        "windows_per_task=5",
        f"batch_size={batch_size}",
    )
    row = rows[0]
    module = load_checkpoint(checkpoint).eval()
    features = FeatureParams.from_mapping(module.hparams["features"])
    clips = torch.cat([b.clips for b in read_clips(probe(path), features, hop_samples=round(0.5 * 22050))])
    assert bool((frame_rms(clips) > 0.01).all())
    with torch.no_grad():
        direct = torch.softmax(module.net(MelFrontEnd(features)(clips)), dim=1).numpy()
    assert row["windows_used"] == len(direct) == len(row["window_probabilities"])
    np.testing.assert_allclose(np.array(row["window_probabilities"]), direct, atol=1e-4)
    expected = direct.mean(axis=0)
    got = np.array([row["scores"]["mean"][name] for name in module.hparams["class_names"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert row["top1"] == module.hparams["class_names"][int(expected.argmax())]
    assert row["window_offsets_s"][:3] == [0.0, 0.5, 1.0]


def test_silence_bad_files_and_errors(compose_cfg, checkpoint, audio_files, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(44100 * 5, np.float32), 44100)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    rows = run_predict(compose_cfg, checkpoint, f"[{silent},{bad},{audio_files['three_seconds']},{empty_folder}]")
    status = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert status["silent.wav"]["status"] == "silent" and "top1" not in status["silent.wav"]
    assert status["silent.wav"]["silent_windows"] > 0
    assert status["bad.wav"]["status"] == "error" and "not readable audio" in status["bad.wav"]["error"]
    assert status["three.flac"]["status"] == "ok"
    assert "no audio files" in status["empty"]["error"]
    with pytest.raises(AmirError, match="nothing could be processed"):
        run_predict(compose_cfg, checkpoint, f"[{bad}]")
    with pytest.raises(AmirError, match="no such file"):
        run_predict(compose_cfg, tmp_path / "missing.ckpt", str(silent))


def test_aggregation_rules():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(aggregate(probabilities, "mean"), [0.3, 13 / 30, 0.8 / 3])
    np.testing.assert_allclose(aggregate(probabilities, "vote"), [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(aggregate(probabilities, "han"), np.array([0.9, 1.3, 0.8]) / 1.3)


@pytest.mark.slow
def test_console_script(checkpoint, audio_files, tmp_path):
    from conftest import run_console_script

    result = run_console_script(
        "amir-predict",
        f"ckpt_path={checkpoint}",
        f"inputs={audio_files['three_seconds']}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "three.flac" in result.stdout and (tmp_path / "run" / "predictions.csv").is_file()
    result = run_console_script(
        "amir-predict",
        f"ckpt_path={checkpoint}",
        f"inputs={tmp_path / 'nothing'}",
        f"hydra.run.dir={tmp_path / 'run2'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "amir-predict: error: nothing could be processed" in result.stderr


def test_batch_size_auto_fits_the_first_layer_in_the_cpu_cache(tmp_path):
    for index, size in enumerate(["64K", "1024K", "32768K"]):  # L1, L2, L3 as Linux reports them
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert last_level_cache_bytes(tmp_path) == 32 * 1024**2
    assert last_level_cache_bytes(tmp_path / "missing") is None
    window = 64 * 128 * 130 * 4  # the thesis net's first-layer output for one window, float32 (4.26 MB)
    cpu = torch.device("cpu")
    assert _batch_size("auto", cpu, window, 32 * 1024**2) == 6  # 80 % of 32 MiB holds 6 windows
    assert _batch_size("auto", cpu, window, 1024**2) == 1  # never fewer than one window
    assert _batch_size("auto", cpu, window, 2 * 1024**3) == 64  # nor more than 64
    assert _batch_size("auto", cpu, window, None) == 4  # no cache size reported
    assert _batch_size("auto", torch.device("cuda"), window, 32 * 1024**2) == 256
    assert _batch_size(16, cpu, window, None) == 16
    for bad in (0, -2, "big", 2.5, True):
        with pytest.raises(AmirError, match="batch_size"):
            _batch_size(bad, cpu, window, None)


def test_a_file_that_fails_part_way_keeps_the_windows_read_before_the_failure(compose_cfg, checkpoint, tmp_path):
    path = write_tone(tmp_path / "broken.flac", 60, 44100, 440.0)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20000] = bytes(20000)  # FLAC frames zeroed near 30 s: the decoder loses sync there
    path.write_bytes(bytes(data))
    (row,) = run_predict(compose_cfg, checkpoint, str(path))
    assert row["status"] == "ok" and "decoding failed" in row["error"]
    # windows every 1.5 s are read in blocks of 16: the first block (0-25.5 s) is whole, the next one fails
    assert row["windows_used"] + row["silent_windows"] == 16 and row["top1"]


def test_timeline_writes_a_png_per_scored_file(compose_cfg, checkpoint, audio_files, tmp_path):
    import matplotlib.image

    same_name = write_tone(tmp_path / "other" / "ten.wav", 4.0, 22050, 330.0)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(22050 * 3, np.float32), 22050)
    inputs = f"[{audio_files['ten_seconds_16k']},{same_name},{silent}]"
    run_predict(compose_cfg, checkpoint, inputs, "timeline=true", "progress=false")
    pictures = sorted(p.name for p in (tmp_path / "timelines").iterdir())
    assert pictures == ["ten-2.png", "ten.png"]  # two files named ten.wav; none for the silent one
    image = matplotlib.image.imread(tmp_path / "timelines" / "ten.png")
    assert image.shape[1] == 1000 and image.shape[0] > 200


def test_timeline_rows_are_classes_columns_windows_and_silent_windows_stay_blank():
    from amir_pl.inference.plots import plot_timeline

    names = ["a", "b", "c"]
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    offsets = [0.0, 0.5, 1.5]  # windows every 0.5 s; the one at 1.0 s and the last (2.0 s) were silent
    scores = aggregate(probs, "han")
    figure = plot_timeline(probs, offsets, 0.5, 3.0, 5, names, scores, "take.wav")
    axis = figure.axes[0]
    grid = np.ma.filled(axis.images[0].get_array(), np.nan)
    nan = np.nan
    expected = np.array([[0.7, 0.6, nan, 0.1, nan], [0.2, 0.3, nan, 0.8, nan], [0.1, 0.1, nan, 0.1, nan]])
    np.testing.assert_allclose(grid, expected)
    assert axis.images[0].get_extent() == pytest.approx([1.25, 3.75, 2.5, -0.5])  # window centres 1.5 .. 3.5 s
    labels = [tick.get_text() for tick in axis.get_yticklabels()]
    assert labels == [f"a  {scores[0]:.2f}", f"b  {scores[1]:.2f}", f"c  {scores[2]:.2f}"]
    assert axis.get_title() == "take.wav: a, b, c"


def _changed_copy(checkpoint, path, noise_seed=None, **hyper_parameters):
    """A copy of ``checkpoint`` with its weights moved by a little noise and/or hyperparameters replaced."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if noise_seed is not None:
        generator = torch.Generator().manual_seed(noise_seed)
        for name, value in saved["state_dict"].items():
            if value.is_floating_point():
                saved["state_dict"][name] = value + 0.05 * torch.randn(value.shape, generator=generator)
    saved["hyper_parameters"].update(hyper_parameters)
    torch.save(saved, path)
    return path


def test_an_ensemble_scores_each_window_with_the_mean_of_its_checkpoints_scores(
    compose_cfg, checkpoint, audio_files, tmp_path
):
    other = _changed_copy(checkpoint, tmp_path / "other.ckpt", noise_seed=0)
    wav = audio_files["ten_seconds_16k"]
    windows = {}
    for name, ckpt in (("first", checkpoint), ("other", other), ("both", f"[{checkpoint},{other}]")):
        (row,) = run_predict(compose_cfg, ckpt, str(wav), "timeline=true", "hop_seconds=1.0")
        windows[name] = np.array(row["window_probabilities"])
    assert np.abs(windows["first"] - windows["other"]).max() > 1e-3  # two different models
    # the reports round each score to 4 decimals
    np.testing.assert_allclose(windows["both"], (windows["first"] + windows["other"]) / 2, atol=2e-4)
    np.testing.assert_allclose(windows["both"].sum(axis=1), 1.0, atol=5e-4)  # still a softmax per window
    (row,) = run_predict(compose_cfg, f"[{checkpoint}]", str(wav), "timeline=true", "hop_seconds=1.0")
    np.testing.assert_allclose(np.array(row["window_probabilities"]), windows["first"], atol=1e-6)  # a list of one


def test_an_ensemble_refuses_checkpoints_that_answer_differently(compose_cfg, checkpoint, audio_files, tmp_path):
    names = list(load_checkpoint(checkpoint).hparams["class_names"])
    shuffled = _changed_copy(checkpoint, tmp_path / "shuffled.ckpt", class_names=names[::-1])
    wav = str(audio_files["three_seconds"])
    with pytest.raises(AmirError, match=r"shuffled.ckpt differs from .* in its class_names"):
        run_predict(compose_cfg, f"[{checkpoint},{shuffled}]", wav)
    sigmoid = _changed_copy(checkpoint, tmp_path / "sigmoid.ckpt", objective="sigmoid")
    with pytest.raises(AmirError, match=r"sigmoid.ckpt differs from .* in its objective"):
        run_predict(compose_cfg, f"[{checkpoint},{sigmoid}]", wav)
    features = {**load_checkpoint(checkpoint).hparams["features"], "f_min": 30.0}
    other_front_end = _changed_copy(checkpoint, tmp_path / "front_end.ckpt", features=features)
    with pytest.raises(AmirError, match=r"front_end.ckpt differs from .* in its features"):
        run_predict(compose_cfg, f"[{checkpoint},{other_front_end}]", wav)
    with pytest.raises(AmirError, match=r"ckpt_path=\[\]"):
        run_predict(compose_cfg, "[]", wav)
    with pytest.raises(AmirError, match="ckpt_path=null"):
        run_predict(compose_cfg, "null", wav)
    with pytest.raises(AmirError, match="no such file"):  # a value Hydra reads as a number is still a path
        run_predict(compose_cfg, "123", wav)


class _Fixed(torch.nn.Module):
    """A stand-in net answering the same logits for every window."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, batch):
        return self.logits.expand(len(batch), -1)


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_an_ensemble_averages_the_members_scores_not_their_logits(objective):
    first, second = [4.0, 0.0, -2.0], [-3.0, 1.0, 2.0]
    nets = [_Fixed(first), _Fixed(second)]
    scorer = Scorer(nets, ["a", "b", "c"], None, None, torch.device("cpu"), 8, "32-true", objective=objective)
    activate = (lambda x: torch.softmax(x, 0)) if objective == "softmax" else torch.sigmoid
    expected = (activate(torch.tensor(first)) + activate(torch.tensor(second))) / 2
    got = scorer.window_scores(torch.zeros(2, 1, 4, 4))
    torch.testing.assert_close(got, expected.expand(2, -1))
    assert not torch.allclose(got[0], activate((torch.tensor(first) + torch.tensor(second)) / 2), atol=1e-2)


class _Trained:
    def __init__(self, augment):
        self.hparams = {"augment": augment}


def test_test_time_warps_auto_span_the_pitch_range_a_checkpoint_was_trained_with(checkpoint):
    assert tta_warps("auto", [_Trained({"pitch_semitones": 2.0})]) == (-2.0, -1.0, 0.0, 1.0, 2.0)
    ensemble = [_Trained({"pitch_semitones": 4.0}), _Trained({"pitch_semitones": 2.0})]
    assert tta_warps("auto", ensemble) == (-2.0, -1.0, 0.0, 1.0, 2.0)  # the smallest range of its members
    assert tta_warps("auto", [_Trained(None)]) == ()  # experiment=paper: no augmentation, no warps
    no_augment = _Trained(None)
    no_augment.hparams = {}  # a checkpoint from before augmentation was a hyperparameter
    assert tta_warps("auto", [no_augment]) == ()
    assert tta_warps("auto", [_Trained({"pitch_semitones": 0.0})]) == ()
    assert tta_warps("auto", [load_checkpoint(checkpoint)]) == ()  # the default recipe trains without pitch warps
    assert tta_warps([-1, 0, 1], [_Trained(None)]) == (-1.0, 0.0, 1.0)  # a list is used as given
    assert tta_warps([], [_Trained({"pitch_semitones": 2.0})]) == tta_warps([0], []) == tta_warps(None, []) == ()
    with pytest.raises(AmirError, match="a list of numbers"):
        tta_warps(["up"], [])


def test_warped_views_are_the_same_warp_for_power_and_decibel_windows():
    features = {"n_fft": 512, "f_min": 0.0, "f_max": 8000.0, "n_mels": 32, "sample_rate": 16000}
    centres = mel_centres(features)
    power = torch.rand(3, 32, 10, generator=torch.Generator().manual_seed(0)) ** 4 + 1e-6
    db = 10 * torch.log10(power)
    from_power = warped_views(power, centres, (-2.0, 0.0, 2.0), "power")
    from_db = warped_views(db, centres, (-2.0, 0.0, 2.0), "db")
    assert from_power[1] is power and from_db[1] is db  # 0: the windows themselves
    for warped_power, warped_db in zip(from_power, from_db):
        torch.testing.assert_close(10 * torch.log10(warped_power), warped_db, atol=1e-4, rtol=0)
    assert not torch.allclose(from_db[0], db) and not torch.allclose(from_db[0], from_db[2])
