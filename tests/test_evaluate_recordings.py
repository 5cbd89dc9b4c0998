"""amir-evaluate-recordings: readers of labelled recordings, label policies, the multilabel metrics
against values worked out by hand, the threshold chosen on validation only, the reports."""

import csv
import json

import numpy as np
import pytest
import torch
from test_prepare import write_tone

from amir_pl.core.errors import AmirError
from amir_pl.inference.predict import aggregate
from amir_pl.inference.recordings import (
    LabelledFile,
    best_threshold,
    bootstrap_interval,
    evaluate_recordings,
    multilabel_summary,
    read_labelled,
    resolve_labels,
    threshold_sweep,
)

CLASSES = ("electric_bass", "cello", "drums", "flute", "piano")  # the tiny checkpoint's (conftest.TINY_CLASSES)


def labelled_folder(root, labels_by_name, seconds=2.0):
    """IRMAS-TestingData style: <name>.wav beside <name>.txt (None: no .txt)."""
    for k, (name, labels) in enumerate(labels_by_name.items()):
        write_tone(root / f"{name}.wav", seconds, 22050, 220.0 * (k + 1), seed=k)
        if labels is not None:
            (root / f"{name}.txt").write_text("".join(f"{label}\t\n" for label in labels))
    return root


def test_folder_reader_takes_the_txt_beside_each_file_and_notes_files_without_labels(tmp_path):
    root = labelled_folder(tmp_path / "irmas", {"a": ["cel", "flu"], "b": None, "c": []})
    write_tone(tmp_path / "irmas" / "deep" / "d.wav", 1.0, 22050)
    (tmp_path / "irmas" / "deep" / "d.txt").write_text("pia\n")
    found, problems = read_labelled(str(root))
    assert [(f.path.name, f.labels) for f in found] == [("a.wav", ("cel", "flu")), ("d.wav", ("pia",))]
    reasons = {p["file"].rsplit("/", 1)[-1]: p["reason"] for p in problems}
    assert "no labels file (b.txt" in reasons["b.wav"] and "empty" in reasons["c.wav"]


def test_irmas_txt_quirks_byte_order_mark_windows_line_ends_tabs_and_a_file_named_twice(tmp_path):
    write_tone(tmp_path / "Part1" / "x.wav", 1.0, 22050)
    (tmp_path / "Part1" / "x.txt").write_bytes("\ufeffgel\t\r\n  voi \r\n\r\n".encode())
    found, problems = read_labelled([str(tmp_path), str(tmp_path / "Part1" / "x.wav")])
    assert found == [LabelledFile(tmp_path / "Part1" / "x.wav", ("gel", "voi"))] and not problems


def test_manifest_reader_resolves_relative_paths_and_splits_labels_on_semicolons(tmp_path):
    write_tone(tmp_path / "audio" / "x.wav", 1.0, 22050)
    write_tone(tmp_path / "audio" / "y.wav", 1.0, 22050)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path , labels\naudio/x.wav ,cello; Flute\naudio/y.wav,\naudio/missing.wav,pia\n,cel\n")
    found, problems = read_labelled([str(manifest)])
    assert found == [LabelledFile(tmp_path / "audio" / "x.wav", ("cello", "Flute"))]
    reasons = sorted(p["reason"] for p in problems)
    assert reasons == ["listed in list.csv (line 4) but not found", "no labels in list.csv (line 3)", "no path"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,instrument\nx.wav,cel\n")
    with pytest.raises(AmirError, match=r"bad.csv: a manifest of labelled recordings needs the columns path,labels"):
        read_labelled(str(bad))


def test_labels_outside_the_model_are_dropped_or_skip_their_file_as_asked(tmp_path):
    files = [
        LabelledFile(tmp_path / "1.wav", ("cel", "cla")),  # clarinet: not a class of the model
        LabelledFile(tmp_path / "2.wav", ("cla",)),
        LabelledFile(tmp_path / "3.wav", ("pia", "Flute", "pia")),
        LabelledFile(tmp_path / "4.wav", ("pia", "pianoo")),  # a typo names no instrument: always skipped
    ]
    kept, outside, skipped = resolve_labels(files, CLASSES, "drop")
    assert [(p.name, labels) for p, labels in kept] == [("1.wav", [1]), ("3.wav", [3, 4])]
    assert outside == {"clarinet": 2} and [s["file"].rsplit("/", 1)[-1] for s in skipped] == ["2.wav", "4.wav"]
    assert "labels that name no instrument: ['pianoo']" in skipped[1]["reason"]
    kept, outside, skipped = resolve_labels(files, CLASSES, "skip")
    assert [p.name for p, _ in kept] == ["3.wav"] and len(skipped) == 3
    with pytest.raises(AmirError, match="unknown_labels='keep'"):
        resolve_labels(files, CLASSES, "keep")


def test_multilabel_metrics_equal_values_worked_out_by_hand():
    # 3 files x 4 classes; the 4th class is never labelled (macro averages leave it out).
    scores = torch.tensor([[0.9, 0.6, 0.1, 0.2], [0.45, 0.7, 0.4, 0.6], [0.8, 0.3, 0.55, 0.1]])
    target = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0]])
    s = multilabel_summary(scores, target, 0.5, ["a", "b", "c", "d"])
    # predicted at 0.5: file 0 {a, b}, file 1 {b, d}, file 2 {a, c}: tp 3, fp 3, fn 1
    assert s["micro"] == pytest.approx({"precision": 0.5, "recall": 0.75, "f1": 0.6})
    per_class = [s["per_class"][name][key] for name in "abcd" for key in ("precision", "recall", "f1")]
    assert per_class == pytest.approx([1, 1, 1, 0.5, 1, 2 / 3, 0, 0, 0, 0, 0, 0])
    assert s["macro_over"] == ["a", "b", "c"]
    assert s["macro"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 5 / 9})
    # LRAP: file 1 ranks b first (1/1) and c fourth (2/4): (1 + 0.75 + 1) / 3
    assert s["lrap"] == pytest.approx(11 / 12)
    # AP: a 1, b 1, c 1/2 (one negative scored above it); d has no label
    assert [s["per_class"][n]["average_precision"] for n in "abcd"] == pytest.approx([1, 1, 0.5, None])
    assert s["map_macro"] == pytest.approx(5 / 6)
    assert s["ap_micro"] == pytest.approx((1 + 1 + 1 + 4 / 8) / 4)  # positives at ranks 1, 2, 3, 8 of 12
    assert s["per_class"]["d"]["support"] == 0 and s["per_class"]["d"]["predicted"] == 1
    assert (s["n"], s["labels"]) == (3, 4)


def test_threshold_sweep_and_the_best_threshold():
    scores = torch.tensor([[0.9, 0.6], [0.3, 0.7], [0.8, 0.2]])
    target = torch.tensor([[1, 0], [0, 1], [1, 0]])
    sweep = threshold_sweep(scores, target, [0.5, 0.65, 0.75, 0.95])
    assert [row["f1_micro"] for row in sweep] == pytest.approx([6 / 7, 1.0, 0.8, 0.0])
    assert best_threshold(sweep) == 0.65
    tie = [{"threshold": 0.3, "f1_micro": 0.9}, {"threshold": 0.2, "f1_micro": 0.9}]
    assert best_threshold(tie) == 0.2


def test_bootstrap_interval_brackets_the_estimate_repeats_under_its_seed_and_narrows_with_more_files():
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(60, 5, generator=generator) < 0.3).int()
    target[target.sum(dim=1) == 0, 0] = 1  # every file has a label, as LRAP needs
    scores = (0.4 * target + 0.6 * torch.rand(60, 5, generator=generator)).clamp(0, 1)
    plain = multilabel_summary(scores, target, 0.5, list("abcde"))
    state = torch.random.get_rng_state()
    booted = bootstrap_interval(scores, target, 0.5, resamples=300, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is left alone
    assert (booted["resamples"], booted["level"], booted["seed"]) == (300, 0.95, 7)
    for name, point in (("micro_f1", plain["micro"]["f1"]), ("lrap", plain["lrap"])):
        low, high = booted[name]["interval"]
        assert low < point < high and 0 < booted[name]["std"] < high - low
    assert bootstrap_interval(scores, target, 0.5, resamples=300, seed=7) == booted
    assert bootstrap_interval(scores, target, 0.5, resamples=300, seed=8)["lrap"] != booted["lrap"]
    # the same files four times over: the same estimate, measured about twice as precisely
    more = bootstrap_interval(scores.repeat(4, 1), target.repeat(4, 1), 0.5, resamples=300, seed=7)
    for name in ("micro_f1", "lrap"):
        width, narrower = (b[name]["interval"][1] - b[name]["interval"][0] for b in (booted, more))
        assert 0.35 < narrower / width < 0.65
    perfect = bootstrap_interval(target.float(), target, 0.5, resamples=50, seed=0)
    assert perfect["lrap"] == {"interval": [1.0, 1.0], "std": 0.0} and perfect["micro_f1"]["interval"] == [1.0, 1.0]


@pytest.fixture(scope="module")
def val_and_test(tmp_path_factory):
    root = tmp_path_factory.mktemp("recordings")
    val = labelled_folder(root / "val", {"v1": ["cel"], "v2": ["flu", "pia"], "v3": ["drums"], "v4": ["bass"]})
    test = labelled_folder(root / "test", {"t1": ["pia"], "t2": ["cel", "cla"], "t3": ["cla"], "t4": ["flu"]}, 3.0)
    return val, test


def run(compose_cfg, checkpoint, *overrides):
    cfg = compose_cfg("evaluate_recordings", [f"ckpt_path={checkpoint}", "num_workers=1", "progress=false", *overrides])
    return evaluate_recordings(cfg)


def test_threshold_is_chosen_on_the_validation_list_and_reports_are_written(
    compose_cfg, checkpoint, val_and_test, tmp_path
):
    val, test = val_and_test
    summaries = run(compose_cfg, checkpoint, f"inputs={test}", f"val_inputs={val}", "threshold=val", "tensorboard=true")
    assert summaries["test"]["threshold"] == summaries["val"]["best_threshold"] == summaries["val"]["threshold"]
    assert "val_inputs (4 files)" in summaries["test"]["threshold_chosen_on"]
    assert "threshold_sweep" not in summaries["test"] and "best_threshold" not in summaries["test"]
    with open(tmp_path / "per_file.csv") as f:
        rows = list(csv.DictReader(f))
    # the chosen threshold is the best micro F1 of the validation files' scores, recomputed here
    val_rows = [r for r in rows if r["split"] == "val"]
    scores = torch.tensor([[float(r[name]) for name in CLASSES] for r in val_rows])
    target = torch.tensor([[int(name in r["labels"].split(";")) for name in CLASSES] for r in val_rows])
    sweep = threshold_sweep(scores, target, [row["threshold"] for row in summaries["val"]["threshold_sweep"]])
    assert summaries["test"]["threshold"] == pytest.approx(best_threshold(sweep), abs=1e-6)
    # clarinet (cla) is outside the model: dropped from t2, and t3 (clarinet only) skipped
    test_rows = {r["file"].rsplit("/", 1)[-1]: r for r in rows if r["split"] == "test"}
    assert set(test_rows) == {"t1.wav", "t2.wav", "t4.wav"} and test_rows["t2.wav"]["labels"] == "cello"
    assert summaries["test"]["unknown_labels"] == {"policy": "drop", "outside_classes": {"clarinet": 2}}
    assert [s["file"].rsplit("/", 1)[-1] for s in summaries["test"]["skipped"]] == ["t3.wav"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved) == {"val", "test"} and saved["test"]["micro"] == summaries["test"]["micro"]
    for name in ("per_class.csv", "precision_recall.png", "per_class_f1.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_bootstrap_adds_an_interval_to_each_list_and_the_printout_only_when_asked(
    compose_cfg, checkpoint, val_and_test, tmp_path, capsys
):
    val, test = val_and_test
    summaries = run(compose_cfg, checkpoint, f"inputs={test}", f"val_inputs={val}", "threshold=val", "bootstrap=40")
    for split in ("val", "test"):
        booted = summaries[split]["bootstrap"]
        assert booted["resamples"] == 40 and booted["seed"] == 12345
        for name, point in (("micro_f1", summaries[split]["micro"]["f1"]), ("lrap", summaries[split]["lrap"])):
            low, high = booted[name]["interval"]
            assert 0 <= low <= point <= high <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["bootstrap"] == summaries["test"]["bootstrap"]
    assert capsys.readouterr().out.count("95 % of 40 resamples of the files: micro F1 ") == 2
    plain = run(compose_cfg, checkpoint, f"inputs={test}", "threshold=0.5")
    assert "bootstrap" not in plain["test"] and "resamples" not in capsys.readouterr().out


def test_file_scores_are_amir_predicts_aggregation_of_the_windows(compose_cfg, checkpoint, val_and_test, tmp_path):
    from amir_pl.inference.predict import predict

    _, test = val_and_test
    run(compose_cfg, checkpoint, f"inputs={test / 't1.wav'}", "aggregation=han", "hop_seconds=0.5")
    with open(tmp_path / "per_file.csv") as f:
        row = next(csv.DictReader(f))
    overrides = ["num_workers=1", "hop_seconds=0.5", "timeline=true", "progress=false"]
    predicted = predict(compose_cfg("predict", [f"ckpt_path={checkpoint}", f"inputs={test / 't1.wav'}", *overrides]))[0]
    windows = np.array(predicted["window_probabilities"])
    assert len(windows) == int((3.0 - 16384 / 22050) // 0.5) + 1
    np.testing.assert_allclose([float(row[name]) for name in CLASSES], aggregate(windows, "han"), atol=2e-4)


def test_errors_name_the_option_and_the_fix(compose_cfg, checkpoint, val_and_test, tmp_path):
    val, test = val_and_test
    with pytest.raises(AmirError, match="threshold=val chooses the threshold on a validation list: add val_inputs"):
        run(compose_cfg, checkpoint, f"inputs={test}", "threshold=val")
    with pytest.raises(AmirError, match="val_inputs and inputs share 3 files"):
        run(compose_cfg, checkpoint, f"inputs={test}", f"val_inputs={test}", "threshold=val")
    with pytest.raises(AmirError, match=r"threshold=1.0: expected a number in \(0, 1\) or 'val'"):
        run(compose_cfg, checkpoint, f"inputs={test}", "threshold=1.0")
    with pytest.raises(AmirError, match="no labelled recording could be scored"):
        run(compose_cfg, checkpoint, f"inputs={test / 't3.wav'}")
    for resamples in (1, -3):
        with pytest.raises(AmirError, match=rf"bootstrap={resamples}: give the number of resamples \(2 or more"):
            run(compose_cfg, checkpoint, f"inputs={test}", f"bootstrap={resamples}")
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_console_script(checkpoint, val_and_test, tmp_path):
    from conftest import run_console_script

    _, test = val_and_test
    result = run_console_script(
        "amir-evaluate-recordings",
        f"ckpt_path={checkpoint}",
        f"inputs={test}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "micro P" in result.stdout and (tmp_path / "run" / "metrics.json").is_file()
    result = run_console_script(
        "amir-evaluate-recordings", f"ckpt_path={checkpoint}", f"inputs={test}", "unknown_labels=maybe", cwd=tmp_path
    )
    assert result.returncode != 0 and "unknown_labels" in result.stderr


def test_a_score_at_the_threshold_is_not_a_prediction_in_the_metrics_nor_in_the_counts():
    scores = torch.tensor([[1.0, 0.5], [0.5, 1.0]])  # han scores: the top class is 1
    target = torch.tensor([[1, 1], [0, 1]])
    s = multilabel_summary(scores, target, 0.5, ["a", "b"])
    assert [s["per_class"][n]["predicted"] for n in "ab"] == [1, 1]
    assert s["micro"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8})


def test_the_test_list_gets_the_validation_lists_best_threshold_not_its_own(
    compose_cfg, checkpoint, val_and_test, monkeypatch
):
    """Scores made up so that the best thresholds differ: 0.3 on validation, 0.8 on test."""
    from collections import Counter

    from amir_pl.inference import recordings

    val_scores = torch.tensor([[0.35, 0.2, 0.1, 0.1, 0.1], [0.1, 0.4, 0.1, 0.1, 0.1]])
    test_scores = torch.tensor([[0.9, 0.7, 0.1, 0.1, 0.1], [0.1, 0.85, 0.1, 0.1, 0.1]])
    target = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    made_up = {
        option: recordings.ScoredList(
            [f"{option}{i}.wav" for i in range(2)], [[0], [1]], s, target, Counter(), [], 2, []
        )
        for option, s in (("val_inputs", val_scores), ("inputs", test_scores))
    }
    monkeypatch.setattr(recordings, "score_list", lambda cfg, scorer, option, listed, columns: made_up[option])
    val, test = val_and_test
    grid = "sweep_thresholds=[0.3,0.8]"
    summaries = run(compose_cfg, checkpoint, f"inputs={test}", f"val_inputs={val}", "threshold=val", grid)
    assert best_threshold(threshold_sweep(test_scores, target, [0.3, 0.8])) == 0.8
    assert summaries["val"]["best_threshold"] == summaries["test"]["threshold"] == 0.3
    assert summaries["test"]["micro"]["precision"] == pytest.approx(2 / 3)  # at 0.3 the test list has a false positive


def test_eval_classes_restrict_the_scored_classes_and_han_is_taken_over_them(
    compose_cfg, checkpoint, val_and_test, tmp_path
):
    val, _ = val_and_test  # labels: v1 cello, v2 flute + piano, v3 drums, v4 bass
    summaries = run(compose_cfg, checkpoint, f"inputs={val}", "eval_classes=irmas", "threshold=0.5")
    summary = summaries["test"]
    assert list(summary["per_class"]) == summary["classes"] == ["cello", "flute", "piano"]
    assert summary["unknown_labels"]["outside_classes"] == {"drums": 1, "electric_bass": 1}
    assert summary["n"] == 2  # v3 and v4 have no label of the evaluated classes
    with open(tmp_path / "per_file.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(max(float(r[name]) for name in ("cello", "flute", "piano")) == 1.0 for r in rows)
    with pytest.raises(AmirError, match=r"eval_classes=\['piano', 'cla'\]: \['clarinet'\]; the model's classes"):
        run(compose_cfg, checkpoint, f"inputs={val}", "eval_classes=[piano,cla]")


def test_an_ensemble_of_checkpoints_averages_their_file_scores_and_names_them(
    compose_cfg, checkpoint, val_and_test, tmp_path
):
    from test_predict import _changed_copy

    _, test = val_and_test
    other = _changed_copy(checkpoint, tmp_path / "other.ckpt", noise_seed=1)
    scores, named = {}, {"first": [str(checkpoint)], "other": [str(other)], "both": [str(checkpoint), str(other)]}
    for name, ckpt in (("first", checkpoint), ("other", other), ("both", f"[{checkpoint},{other}]")):
        summary = run(compose_cfg, ckpt, f"inputs={test}", "aggregation=mean", "threshold=0.5")["test"]
        with open(tmp_path / "per_file.csv") as f:
            scores[name] = np.array([[float(row[c]) for c in CLASSES] for row in csv.DictReader(f)])
        assert summary["checkpoints"] == named[name]
    assert np.abs(scores["first"] - scores["other"]).max() > 1e-3
    np.testing.assert_allclose(scores["both"], (scores["first"] + scores["other"]) / 2, atol=2e-4)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["checkpoints"] == [str(checkpoint), str(other)]
