"""amir-synth's multi-instrument mixtures: sample libraries made here (as in test_synth_samples),
mixed at the drawn levels, annotated with the predominant instruments as IRMAS's test set is."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import open_dict
from test_synth_samples import FLUTE, KIT, ORGAN, _source, write_hit, write_note

from amir_pl.core.errors import AmirError
from amir_pl.core.labels import CLASS_NAMES, canonical_name, irmas_code
from amir_pl.dataset.prepare import prepare
from amir_pl.dataset.synth import synth

RATE = 22050
CLASSES = "[flute,organ,drums,piano]"
PIANO = [{"name": "piano", "folder": "flute", "release": 0.3}]  # the flute's tones, held longer
MIXTURES = [
    "mixtures.count=5",
    "mixtures.instruments=[2,4]",
    "mixtures.predominant=[1,3]",
    "mixtures.seconds=[2.0,4.0]",
]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("library"))


def make_library(root: Path) -> Path:
    """A flute, an organ and a drum kit of synthetic samples (the piano plays the flute's tones)."""
    for name, midi in (("A3", 57), ("A4", 69), ("C5", 72), ("Fs5", 78)):
        write_note(root / "flute" / f"{name}.wav", 440.0 * 2 ** ((midi - 69) / 12), seconds=2.0)
    write_note(root / "organ" / "low.wav", 110.0, seconds=3.0, decay=20.0)
    for layer, amplitude in (("soft", 0.2), ("hard", 0.9)):
        write_hit(root / "kit" / f"kick_{layer}.wav", 60.0, amplitude, 1)
        write_hit(root / "kit" / f"snare_{layer}.wav", 200.0, amplitude, 2)
        write_hit(root / "kit" / f"hat_{layer}.wav", 3000.0, amplitude / 2, 3)
    return root


def _render(compose_cfg, output, library, *overrides):
    """Train on the family `made`; validate and test on `held`, the only family with a piano."""
    cfg = compose_cfg(
        "synth",
        [
            f"output={output}",
            "clips_per_class=8",
            "progress=false",
            "num_workers=1",
            f"classes={CLASSES}",
            "splits.train.families=[made]",
            "splits.val.families=[held]",
            "splits.test.families=[held]",
            *overrides,
        ],
    )
    made = _source(library, flute=FLUTE, organ=ORGAN, drums=KIT)
    held = _source(library, "held", flute=FLUTE, organ=ORGAN, drums=KIT, piano=PIANO)
    with open_dict(cfg):
        cfg.merge_with({"sources": {"made": made, "held": held}})
    return synth(cfg)


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))


def test_irmas_codes_round_trip_through_canonical_names():
    assert irmas_code("piano") == "pia" and irmas_code("Acoustic Guitar") == "gac" and irmas_code("voice") == "voi"
    assert irmas_code("drums") == "drums" and irmas_code("electric_bass") == "electric_bass"  # IRMAS has no code
    assert all(canonical_name(irmas_code(name)) == name for name in CLASS_NAMES)


def test_mixtures_come_from_the_test_family_and_annotations_match_the_loudest_parts(compose_cfg, library, tmp_path):
    output = _render(
        compose_cfg,
        tmp_path / "synth",
        library,
        "clips_per_class=0",  # mixtures only
        *MIXTURES,
        "mixtures.count=12",
        "mixtures.stems=true",
        "noise_probability=0",
        "peak_range=[0.3,0.6]",  # no part of a mixture clips
    )
    assert not (output / "manifest.csv").exists() and not (output / "test").exists()
    rows = _rows(output / "mixtures.csv")
    assert [r["path"] for r in rows] == [f"mixtures/test/test-mix-{i:05d}.flac" for i in range(12)]
    pieces, shapes = set(), set()
    for row in rows:
        instruments, labels = row["instruments"].split(";"), row["labels"].split(";")
        levels = [float(level) for level in row["level_db"].split(";")]
        assert 2 <= len(instruments) <= 4 and len(set(instruments)) == len(instruments)
        assert 1 <= len(labels) < len(instruments) and instruments[: len(labels)] == labels
        assert set(row["families"].split(";")) == {"held"} and row["split"] == "test"
        audio, rate = sf.read(output / row["path"], dtype="float32")
        assert rate == RATE and 2.0 <= len(audio) / rate <= 4.0 and len(audio) == round(float(row["seconds"]) * rate)
        # The .txt beside it: the predominant instruments, one IRMAS code (or class name) a line.
        lines = (output / row["path"]).with_suffix(".txt").read_text().splitlines()
        assert lines == [irmas_code(label) for label in labels] and [canonical_name(c) for c in lines] == labels
        # From the audio: the parts sum to the mixture, the labelled ones are the loudest, by the drawn gap.
        stems = {
            name: sf.read(output / "mixture_stems/test" / Path(row["path"]).stem / f"{name}.flac", dtype="float32")[0]
            for name in instruments
        }
        assert np.abs(sum(stems.values()) - audio).max() < 5e-4  # 16-bit rounding of 2-5 files
        loudness = {name: _db(stem) for name, stem in stems.items()}
        top = max(loudness.values())
        assert {name for name, db in loudness.items() if db > top - 1.0} == set(labels)
        quietest_label = min(loudness[name] for name in labels)
        for name, level in zip(instruments, levels, strict=True):
            assert abs(loudness[name] - top - level) < 0.1, (row, loudness)
            assert name in labels or loudness[name] <= quietest_label - 8.0 + 0.1
        pieces.update(instruments)
        shapes.add((len(instruments), len(labels)))
    assert "piano" in pieces  # only the held-out family plays it
    assert {n for n, _ in shapes} == {2, 3, 4} and {k for _, k in shapes} >= {1, 2}


def test_mixtures_are_deterministic_off_by_default_and_leave_the_clips_alone(compose_cfg, library, tmp_path):
    plain = _render(compose_cfg, tmp_path / "plain", library)
    assert not (plain / "mixtures").exists() and not (plain / "mixtures.csv").exists()  # off by default
    one = _render(compose_cfg, tmp_path / "one", library, *MIXTURES, "mixtures.splits=[val,test]")
    two = _render(compose_cfg, tmp_path / "two", library, *MIXTURES, "mixtures.splits=[val,test]", "num_workers=2")
    other = _render(compose_cfg, tmp_path / "other", library, *MIXTURES, "mixtures.splits=[val,test]", "seed=7")
    mixed = sorted(p.relative_to(one) for p in (one / "mixtures").rglob("*") if p.is_file())
    assert len(mixed) == 2 * 2 * 5  # val and test, a .flac and a .txt each
    for name in [*mixed, Path("mixtures.csv")]:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert (one / "mixtures.csv").read_bytes() != (other / "mixtures.csv").read_bytes()
    # the solo clips are the render's without mixtures, byte for byte
    clips = sorted(p.relative_to(plain) for p in plain.rglob("*.flac"))
    assert clips and clips == sorted(p.relative_to(one) for p in one.rglob("*.flac") if p.parts[-3] != "mixtures")
    assert all((plain / name).read_bytes() == (one / name).read_bytes() for name in clips)


def test_prepare_reads_a_render_with_mixtures_as_before(compose_cfg, library, tmp_path):
    output = _render(compose_cfg, tmp_path / "synth", library, *MIXTURES, "mixtures.stems=true")
    rows = _rows(output / "manifest.csv")
    reports = [
        prepare(
            compose_cfg(
                "prepare",
                [f"source={source}", f"output={tmp_path / 'd.h5'}", "overwrite=true", "progress=false"]
                + ["num_workers=1", f"classes={CLASSES}"],
            )
        )
        for source in (output, output / "manifest.csv")
    ]
    assert [report["files_used"] for report in reports] == [len(rows), len(rows)]  # the solo clips, no mixture
    # the folder scan says what it left out: the mixtures are not a class
    assert any("['mixture_stems', 'mixtures'] ignored" in s["reason"] for s in reports[0]["skipped"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mixtures.predominant=[2,3]", r"mixtures.predominant=\[2, 3\]: give 1 or more, and fewer than"),
        ("mixtures.seconds=[0.0,5.0]", r"mixtures.seconds=\[0.0, 5.0\]: give a length in seconds above 0"),
        ("mixtures.seconds=[5.0,2.0]", r"mixtures.seconds=\[5.0, 2.0\]: give a range \[low, high\]"),
        ("mixtures.splits=[tset]", r"mixtures.splits=\['tset'\]: \['tset'\] not a split of this render"),
        ("mixtures.background_db=[-10.0,0.0]", r"mixtures.background_db=\[-10.0, 0.0\]: the accompanying"),
        ("mixtures.instruments=[5,5]", r"mixtures.instruments=\[5, 5\]: the installed sources of split test"),
    ],
)
def test_a_bad_mixture_option_is_one_line_naming_it(compose_cfg, library, tmp_path, override, message):
    with pytest.raises(AmirError, match=message) as error:
        _render(compose_cfg, tmp_path / "bad", library, "mixtures.count=1", override)
    assert "\n" not in str(error.value)
