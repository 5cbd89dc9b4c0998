import csv
import json
import re
from pathlib import Path

import pytest
from conftest import FAST

from amir_pl.core.labels import CLASS_NAMES
from amir_pl.dataset.prepare import prepare
from amir_pl.dataset.schema import read_info
from amir_pl.dataset.synth import INSTRUMENTS, available_renderer, compose_phrase, fallback_font, synth
from amir_pl.dataset.synth import renderers as synth_module
from amir_pl.training.train import train

TIMGM = "/usr/share/sounds/sf2/TimGM6mb.sf2"
needs_font = pytest.mark.skipif(
    not Path(TIMGM).is_file() and fallback_font() is None, reason="no TimGM6mb.sf2 (apt-get install timgm6mb-soundfont)"
)
needs_fluidsynth = pytest.mark.skipif(
    not synth_module._can_import_fluidsynth(), reason="no libfluidsynth (apt-get install libfluidsynth3)"
)


def _render(compose_cfg, output, *overrides):
    # TimGM6mb alone for every split keeps the test fast (the big fonts take seconds to load).
    cfg = compose_cfg(
        "synth",
        [
            f"output={output}",
            "clips_per_class=4",
            "progress=false",
            "splits.train.families=[tim]",
            "splits.val.families=[tim]",
            "splits.test.families=[tim]",
            "~sources.sf_GMbank",
            "splits.train.fraction=0.5",
            "splits.val.fraction=0.25",
            "splits.test.fraction=0.25",
            *overrides,
        ],
    )
    return synth(cfg)


def _manifest(output):
    with (Path(output) / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


@needs_font
def test_render_prepare_train_end_to_end(compose_cfg, tmp_path):
    output = _render(compose_cfg, tmp_path / "synth", "num_workers=2")
    rows = _manifest(output)
    assert len(rows) == 4 * len(CLASS_NAMES)
    for row in rows:
        instrument = INSTRUMENTS[row["label"]]
        assert int(row["program"]) in instrument.programs and int(row["bank"]) == instrument.bank
        assert row["path"].startswith(f"{row['split']}/{row['label']}/tim/") and row["source"] == "TimGM6mb"
        assert (output / row["path"]).is_file()
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["bank"] == "128" for r in rows if r["label"] == "drums")

    dataset = tmp_path / "synth.h5"
    report = prepare(
        compose_cfg("prepare", [f"source={output}", f"output={dataset}", "progress=false", "num_workers=1"])
    )
    assert report["files_used"] == len(rows)  # none silent, none unreadable
    assert read_info(dataset).splits == {"train": 24, "val": 12, "test": 12}
    summaries = train(compose_cfg("train", [f"data.path={dataset}", *FAST, "trainer.max_epochs=1"]))
    assert summaries["test"]["n"] == 12


@needs_font
def test_same_seed_same_audio_bytes_whatever_workers_and_no_bleed(compose_cfg, tmp_path):
    """Clips rendered after different predecessors (1 vs 2 workers) are byte-identical: nothing bleeds."""
    one = _render(compose_cfg, tmp_path / "one", "num_workers=1", "classes=[piano,drums,flute]")
    two = _render(compose_cfg, tmp_path / "two", "num_workers=2", "classes=[piano,drums,flute]")
    other = _render(compose_cfg, tmp_path / "other", "num_workers=1", "classes=[piano,drums,flute]", "seed=7")
    files = sorted(p.relative_to(one) for p in one.rglob("*.flac"))
    assert len(files) == 12
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert any((one / name).read_bytes() != (other / name).read_bytes() for name in files)


@needs_font
def test_fallback_renderer_when_fluidsynth_is_missing(compose_cfg, tmp_path, monkeypatch):
    pytest.importorskip("tinysoundfont")
    monkeypatch.setattr(synth_module, "_can_import_fluidsynth", lambda: False)
    assert available_renderer("auto") == "tinysoundfont"
    output = _render(compose_cfg, tmp_path / "tiny", "num_workers=1", "classes=[drums,violin]")
    rows = _manifest(output)
    assert {r["renderer"] for r in rows} == {"tinysoundfont"} and len(rows) == 8
    report = prepare(
        compose_cfg(
            "prepare",
            [
                f"source={output}",
                f"output={tmp_path / 't.h5'}",
                "progress=false",
                "num_workers=1",
                "classes=[drums,violin]",
            ],
        )
    )
    assert report["files_used"] == 8


def test_missing_font_names_the_debian_package(compose_cfg, tmp_path):
    from amir_pl.core.errors import AmirError

    cfg = compose_cfg(
        "synth", [f"output={tmp_path / 'x'}", "sources.TimGM6mb.path=/nonexistent.sf2", "allow_fallback_font=false"]
    )
    with pytest.raises(AmirError, match="apt-get install timgm6mb-soundfont"):
        synth(cfg)


@needs_font
def test_a_soundfont_source_plays_its_own_programs_and_leaves_out_a_class_given_none(compose_cfg, tmp_path):
    # conf/sources/generaluser.yaml: a font whose cello is another family's plays no cello, and one preset for vocals.
    programs = "sources.TimGM6mb.programs={cello:[],vocals:[52],piano:[1]}"
    rows = _manifest(_render(compose_cfg, tmp_path / "own", programs, "num_workers=1"))
    labels = {row["label"] for row in rows}
    assert "cello" not in labels and labels == set(CLASS_NAMES) - {"cello"}
    assert {row["program"] for row in rows if row["label"] == "vocals"} == {"52"}
    assert {row["program"] for row in rows if row["label"] == "piano"} == {"1"}
    assert {row["program"] for row in rows if row["label"] == "organ"} <= {"16", "17", "18", "19"}  # the defaults


@needs_font
def test_an_optional_soundfont_that_is_not_installed_is_skipped_not_replaced(compose_cfg, tmp_path, caplog):
    from omegaconf import open_dict

    cfg = compose_cfg(
        "synth", [f"output={tmp_path / 'optional'}", "clips_per_class=2", "progress=false", "layout=pool"]
    )
    with open_dict(cfg):  # as a user's conf/sources/<name>.yaml would add it
        cfg.merge_with({"sources": {"Extra": {"family": "tim", "kind": "soundfont", "path": "/nonexistent.sf2"}}})
        cfg.sources.Extra.update(install="make sources", optional=True)
        cfg.splits.train.families = ["tim"]
        del cfg.sources.sf_GMbank
    rows = _manifest(synth(cfg))
    assert rows and {row["source"] for row in rows} == {"TimGM6mb"}
    assert "source Extra skipped: /nonexistent.sf2 not found (make sources)" in caplog.text


@pytest.mark.parametrize(
    ("programs", "message"),
    [
        ("{celo:[]}", r"sources.TimGM6mb.programs.celo: not a class"),
        ("{cello:[300]}", r"sources.TimGM6mb.programs.cello=\[300\]: give General MIDI programs, 0-127"),
    ],
)
def test_a_bad_programs_entry_is_one_clear_error(compose_cfg, tmp_path, programs, message):
    from amir_pl.core.errors import AmirError

    with pytest.raises(AmirError, match=message):
        _render(compose_cfg, tmp_path / "bad", f"sources.TimGM6mb.programs={programs}")


def test_layout_families_generaluser_adds_training_clips_and_keeps_the_validation_and_test_clips(compose_cfg, tmp_path):
    from amir_pl.dataset.synth.render import UsableSource, make_jobs

    def jobs(*overrides):
        cfg = compose_cfg("synth", [f"output={tmp_path}", "accompaniment.probability=0.5", *overrides])
        families = {family for split in cfg.splits.values() for family in split.families}
        kits = ("sonicpi", "hydrogen")  # drum kits; every other family plays every class here
        sources = {
            f: UsableSource(f, f, "soundfont", "/x.sf2", ("drums",) if f in kits else tuple(INSTRUMENTS))
            for f in sorted(families)
        }
        return make_jobs(cfg, sources)

    plain = jobs("layout=families", "clips_per_class=300")
    added = jobs("layout=families_generaluser", "clips_per_class=405")
    train = [job for job in added if job.split == "train"]
    assert len(train) == 315 * len(CLASS_NAMES) and {job.family for job in train} >= {"fluid", "tonejs", "generaluser"}
    per_family = [job for job in train if job.label == "piano"]
    assert sum(job.family == "fluid" for job in per_family) == 105  # as many as layout=families gives fluid at 300
    assert [job for job in added if job.split != "train"] == [job for job in plain if job.split != "train"]


def test_phrases_stay_in_range_and_vary():
    import numpy as np

    for label, instrument in INSTRUMENTS.items():
        styles, tempos = set(), set()
        for seed in range(20):
            phrase = compose_phrase(instrument, 3.0, np.random.default_rng(seed))
            styles.add(phrase.style)
            tempos.add(round(phrase.tempo))
            keys = [key for _, kind, key, _ in phrase.events if kind == "on"]
            assert keys, label
            assert all(instrument.low <= key <= instrument.high for key in keys) or label == "drums"
            assert all(1 <= velocity <= 127 for _, kind, _, velocity in phrase.events if kind == "on")
        assert len(styles) > 1 and len(tempos) > 5, label


def test_baseline_scores_like_the_trainer(compose_cfg, tiny_h5, tmp_path):
    from amir_pl.training.baseline import baseline

    summaries = baseline(compose_cfg("baseline", [f"data.path={tiny_h5}", f"also_evaluate=[{tiny_h5}]"]))
    assert set(summaries) == {"test", "tiny/train", "tiny/val", "tiny/test"}
    assert summaries["test"] == summaries["tiny/test"]
    assert summaries["test"]["n"] == 35 and summaries["test"]["top1_error"] < 0.3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["confusion_matrix"] == summaries["test"]["confusion_matrix"]
    assert (tmp_path / "per_class.csv").is_file() and (tmp_path / "confusion_matrix.png").is_file()


@needs_font
@needs_fluidsynth
def test_articulation_offsets_reach_the_attack_the_release_and_the_vibrato():
    import numpy as np

    from amir_pl.dataset.synth.render import ARTICULATION_GENERATORS

    rate = 22050
    renderer = synth_module.FluidSynthRenderer(rate)
    font = TIMGM if Path(TIMGM).is_file() else str(fallback_font())

    def flute_a4(**offsets):  # held for 1 s, then released
        renderer.select(font, 0, 73, 0)
        renderer.articulate(0, {ARTICULATION_GENERATORS[name][0]: value for name, value in offsets.items()})
        renderer.noteon(0, 69, 100)
        held = renderer.render(rate)
        renderer.noteoff(0, 69)
        audio = np.concatenate([held, renderer.render(rate)]).astype(np.float64)
        renderer.reset()
        return audio

    def rms(audio, start, end):
        return float(np.sqrt(np.mean(audio[round(start * rate) : round(end * rate)] ** 2)))

    def onset_share(audio):  # the first 40 ms against the sustain
        return rms(audio, 0.0, 0.04) / rms(audio, 0.5, 1.0)

    def release_share(audio):  # 0.5-1 s after the note-off against the sustain
        return rms(audio, 1.5, 2.0) / rms(audio, 0.5, 1.0)

    def pitch_spread_cents(audio):  # the spread of the strongest frequency near 440 Hz, 46 ms windows
        window, n_fft = 1024, 1 << 16
        bins = np.fft.rfftfreq(n_fft, 1 / rate)
        near = (bins > 300) & (bins < 600)
        peaks = []
        for start in range(rate // 4, rate - window, rate // 50):
            spectrum = np.abs(np.fft.rfft(audio[start : start + window] * np.hanning(window), n_fft))
            peaks.append(bins[near][np.argmax(spectrum[near])])
        return float(np.std(1200 * np.log2(np.array(peaks) / 440.0)))

    plain = flute_a4()
    assert np.array_equal(plain, flute_a4()) and np.array_equal(plain, flute_a4(attack_timecents=0))
    assert onset_share(flute_a4(attack_timecents=7200)) < 0.5 * onset_share(plain)
    assert release_share(flute_a4(release_timecents=4800)) > 10 * release_share(plain)
    assert pitch_spread_cents(flute_a4(vibrato_cents=40)) > pitch_spread_cents(plain) + 10
    assert not np.array_equal(flute_a4(vibrato_cents=40), flute_a4(vibrato_cents=40, vibrato_rate_cents=600))


@needs_font
@needs_fluidsynth
def test_articulation_in_melodic_training_parts_only_and_named_in_the_manifest(compose_cfg, tmp_path):
    from amir_pl.core.errors import AmirError
    from amir_pl.dataset.synth.render import _check_articulation

    common = ("num_workers=1", "classes=[violin,flute,drums]", "accompaniment.probability=1")
    articulated = _render(compose_cfg, tmp_path / "art", *common, "articulation.probability=1")
    plain = _render(compose_cfg, tmp_path / "plain", *common)
    ranges = {"attack": (-2400, 7200), "release": (-2400, 4800), "vibrato": (0, 40), "vibrato_rate": (-600, 600)}
    for row in _manifest(articulated):
        same = (articulated / row["path"]).read_bytes() == (plain / row["path"]).read_bytes()
        assert same == (row["split"] != "train"), row  # validation and test clips and their accompaniment: no draw
        if row["split"] == "train" and row["label"] != "drums":
            drawn = dict(item.split("=") for item in row["articulation"].split())
            assert drawn.keys() == ranges.keys(), row
            assert all(ranges[name][0] <= float(value) <= ranges[name][1] for name, value in drawn.items()), row
        else:
            assert row["articulation"] == "", row  # drums and the other splits play their presets as they are
    assert {row["articulation"] for row in _manifest(plain)} == {""}
    again = _render(compose_cfg, tmp_path / "again", *common, "articulation.probability=1")
    assert all(
        (again / row["path"]).read_bytes() == (articulated / row["path"]).read_bytes() for row in _manifest(again)
    )
    for bad in ("probability=2", "attack_timecents=[100,0]", "vibrato_cents=[5]", "splits=[trian]"):
        with pytest.raises(AmirError, match=rf"articulation\.{re.escape(bad.split('=')[0])}="):
            _render(compose_cfg, tmp_path / "bad", "articulation.probability=0.5", f"articulation.{bad}")
    # Off, its options are not read.
    _render(compose_cfg, tmp_path / "off", "num_workers=1", "classes=[flute]", "articulation.attack_timecents=[1,0]")
    # The tinysoundfont fallback cannot play them: refused before anything renders.
    cfg = compose_cfg("synth", [f"output={tmp_path / 'tiny'}", "articulation.probability=0.5"])
    with pytest.raises(AmirError, match=r"articulation.probability=0.5 needs fluidsynth .*renderer=auto"):
        _check_articulation(cfg, "tinysoundfont")
