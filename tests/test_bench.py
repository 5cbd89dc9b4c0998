"""amir-bench on tiny sizes: it runs and reports what it claims (tests never assert speed)."""

import json

import pytest

from amir_pl.bench.run import bench
from amir_pl.core.errors import AmirError

TINY_OVERHEAD = [
    "benches=[overhead]",
    "overhead.steps=4",
    "overhead.warmup=1",
    "overhead.batch_size=4",
    "overhead.input_shape=[32,33]",
]


def test_overhead_alternates_the_order_and_reports_medians_of_every_round(compose_cfg, tmp_path, capsys, monkeypatch):
    import amir_pl.bench.run

    waits = []  # each loop waits for the device at the two ends of its timed window, never per step
    monkeypatch.setattr(amir_pl.bench.run, "_synchronize", lambda: waits.append(1))
    results = bench(compose_cfg("bench", [*TINY_OVERHEAD, "overhead.rounds=3"]))["overhead"]
    assert len(waits) == 3 * 2 * 2  # rounds x (bare, Lightning) x (start, end)
    out = capsys.readouterr().out
    # bare, Lightning | Lightning, bare | bare, Lightning: neither always runs first
    assert "round 1/3 (bare then lightning)" in out
    assert "round 2/3 (lightning then bare)" in out
    assert "round 3/3 (bare then lightning)" in out
    rounds = results["per_round"]
    assert results["rounds"] == 3 and results["timed_steps"] == 3
    assert all(len(values) == 3 and all(v > 0 for v in values) for values in rounds.values())
    for key in ("bare_steps_per_s", "lightning_steps_per_s", "lightning_over_bare"):
        assert results[key] == sorted(rounds[key])[1], key  # the median of the three rounds
    for bare, lightning, ratio in zip(
        *(rounds[k] for k in ("bare_steps_per_s", "lightning_steps_per_s", "lightning_over_bare"))
    ):
        assert ratio == pytest.approx(lightning / bare, rel=0.01, abs=0.002)  # each round's pair, side by side
    assert json.loads((tmp_path / "bench.json").read_text())["overhead"] == results


@pytest.mark.parametrize(
    "bad, option", [("overhead.rounds=0", "overhead.rounds"), ("overhead.warmup=4", "overhead.steps")]
)
def test_overhead_refuses_settings_with_nothing_to_time(compose_cfg, bad, option):
    with pytest.raises(AmirError, match=rf"^bench {option}="):
        bench(compose_cfg("bench", [*TINY_OVERHEAD, bad]))


def test_train_cpu_times_amir_trains_recipe_end_to_end_in_each_precision_beside_the_bare_step(compose_cfg, tmp_path):
    overrides = ["benches=[train_cpu]", "train_cpu.clips=24", "train_cpu.bare_steps=2"]
    recipe = "train_cpu.overrides=['experiment=transfer','data.batch_size=8']"
    rows = bench(compose_cfg("bench", [*overrides, recipe]))["train_cpu"]
    assert [row["precision"] for row in rows] == ["32-true", "bf16-mixed"]
    reference = {row["bare_fp32_channels_last_samples_per_s"] for row in rows}
    assert len(reference) == 1  # one reference step, timed once in this run, for both rows
    for row in rows:
        assert row["clips"] == 24 and row["batch_size"] == 8
        assert row["overrides"] == ["experiment=transfer", "data.batch_size=8"]
        assert row["samples_per_s"] > 0 and row["bare_samples_per_s"] > 0
        assert row["of_bare"] == pytest.approx(row["samples_per_s"] / row["bare_samples_per_s"], rel=0.02)
        ratio = row["samples_per_s"] / row["bare_fp32_channels_last_samples_per_s"]
        assert row["over_bare_fp32_channels_last"] == pytest.approx(ratio, rel=0.02)
        assert "native bf16" in row["device"]
    assert not (tmp_path / "bench_train_cpu.h5").exists()  # the generated file is removed


def test_predict_bench_scores_every_window_once_per_test_time_warp(compose_cfg, tmp_path):
    overrides = ["benches=[predict]", "predict.files=1", "predict.seconds=6.0", "predict.num_workers=1"]
    plain = bench(compose_cfg("bench", overrides))["predict"]
    warped = bench(compose_cfg("bench", [*overrides, "predict.tta_semitones=[-1,0,1]"]))["predict"]
    assert plain["tta_semitones"] == [] and warped["tta_semitones"] == [-1.0, 0.0, 1.0]
    assert plain["windows"] == warped["windows"] == 3  # 6 s: windows at 0, 1.5 and 3 s
    assert plain["seconds_of_audio_per_second"] > 0 and warped["seconds_of_audio_per_second"] > 0


def test_overhead_times_a_net_with_harmonics(compose_cfg):
    # model.harmonics places its bands with mel parameters: the bench's random clips get those of their size
    results = bench(compose_cfg("bench", [*TINY_OVERHEAD, "overhead.rounds=1", "model.harmonics=[0.5,1,2]"]))
    assert results["overhead"]["bare_steps_per_s"] > 0 and results["overhead"]["lightning_steps_per_s"] > 0
