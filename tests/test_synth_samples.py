"""The multisample renderer, recordings sources and source families: sample libraries made here (tones
named by pitch, drum one-shots in velocity layers) and long takes, played through amir-synth."""

import csv
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from omegaconf import open_dict

from amir_pl.core.errors import AmirError
from amir_pl.dataset.prepare import prepare
from amir_pl.dataset.synth import synth
from amir_pl.dataset.synth.phrases import Phrase
from amir_pl.dataset.synth.recordings import RecordingPlayer, RecordingSet, find_recordings
from amir_pl.dataset.synth.samples import MultisampleRenderer, build_instrument, note_number

RATE = 22050


def write_note(path: Path, hz: float, seconds: float = 4.0, rate: int = 44100, decay: float = 1.5) -> Path:
    """A decaying tone with two harmonics, like a plucked or bowed note."""
    t = np.arange(int(seconds * rate)) / rate
    y = 0.5 * np.exp(-t / decay) * (np.sin(2 * np.pi * hz * t) + 0.3 * np.sin(4 * np.pi * hz * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.concatenate([np.zeros(int(0.03 * rate)), y]).astype(np.float32), rate)
    return path


def write_hit(path: Path, hz: float, amplitude: float, seed: int, rate: int = 44100) -> Path:
    """A short noisy drum hit; ``hz`` colours it so that two hits can be told apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.4 * rate)) / rate
    y = amplitude * np.exp(-t / 0.06) * (0.5 * rng.standard_normal(len(t)) + np.sin(2 * np.pi * hz * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y.astype(np.float32), rate)
    return path


def frequency(audio: np.ndarray, rate: int) -> float:
    """The strongest partial, to a small fraction of a bin (parabolic interpolation of the log spectrum)."""
    spectrum = np.log(np.abs(np.fft.rfft(audio * np.hanning(len(audio)), 8 * len(audio))) + 1e-12)
    k = int(np.argmax(spectrum))
    a, b, c = spectrum[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (8 * len(audio))


def cents(measured: float, wanted: float) -> float:
    return 1200 * np.log2(measured / wanted)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    for name, midi in (("A3", 57), ("A4", 69), ("C5", 72), ("Fs5", 78)):
        write_note(root / "flute" / f"{name}.wav", 440.0 * 2 ** ((midi - 69) / 12))
    write_note(root / "organ" / "low.wav", 110.0, decay=20.0)
    for layer, amplitude in (("soft", 0.2), ("hard", 0.9)):
        write_hit(root / "kit" / f"kick_{layer}.wav", 60.0 if layer == "soft" else 90.0, amplitude, 1)
        write_hit(root / "kit" / f"snare_{layer}.wav", 200.0, amplitude, 2)
        write_hit(root / "kit" / f"hat_{layer}.wav", 3000.0, amplitude / 2, 3)
    return root


def _source(root, family="made", **instruments):
    return {
        "family": family,
        "kind": "samples",
        "root": str(root),
        "install": "made by the test",
        "instruments": instruments,
    }


FLUTE = [{"name": "flute", "folder": "flute", "release": 0.1}]
ORGAN = [{"name": "organ", "folder": "organ", "notes": {"low.wav": "A2"}, "release": 0.05}]
KIT = [
    {
        "name": "kit",
        "folder": "kit",
        "layers": ["soft", "hard"],
        "keys": {36: "kick_*", 38: "snare_*", 42: "hat_*"},
    }
]


def test_note_names_and_midi_numbers_in_file_names():
    assert note_number("C4.mp3") == 60 and note_number("A4.wav") == 69
    assert note_number("Cs4.mp3") == note_number("C#4.flac") == note_number("Db4.ogg") == 61
    assert note_number("F2 v2.mp3") == 41  # tonejs's second take of F2
    assert note_number("A-1.wav") == 9 and note_number("066-F#.wav") == 66
    assert note_number("Kick-Soft.wav") is None and note_number("bassdrum01.ogg") is None
    assert note_number("01-C4.wav") == 60  # a track number, not a MIDI key
    assert note_number("D#4v8.ogg") == 63 and note_number("A0v12.ogg") == 21  # the Salamander piano's velocity


def test_the_salamander_source_finds_its_three_velocity_packages(compose_cfg, tmp_path):
    # conf/sources/salamander.yaml (optional, not in the default sources) against the npm packages' layout
    packages = tmp_path / "salamander/node_modules/@audio-samples"
    for velocity in (4, 8, 12):
        for name, hz in (("A0", 27.5), ("C4", 261.63), ("D#4", 311.13)):
            write_note(packages / f"piano-velocity{velocity}/audio/{name}v{velocity}.ogg", hz)
    cfg = compose_cfg("synth", ["output=x", f"sources_dir={tmp_path}", "sources=[salamander]"])
    spec = cfg.sources.salamander
    assert spec.family == "salamander" and list(spec.instruments) == ["piano"]
    pianos = [build_instrument(Path(spec.root), dict(entry)) for entry in spec.instruments.piano]
    assert [p.name for p in pianos] == ["salamander-v4", "salamander-v8", "salamander-v12"]
    assert all(sorted(s.key for s in p.samples) == [21, 60, 63] for p in pianos)


@pytest.mark.parametrize("key", [69, 71, 74, 57, 61])
def test_a_rendered_note_is_within_a_few_cents_of_the_asked_pitch(library, key):
    renderer = MultisampleRenderer(RATE, 8.0)
    flute = build_instrument(library, FLUTE[0])
    phrase = Phrase("test", 120.0)
    phrase.note(0.1, 2.0, key, 100)
    audio = renderer.play(flute, phrase, 3 * RATE, np.random.default_rng(0))
    wanted = 440.0 * 2 ** ((key - 69) / 12)
    assert abs(cents(frequency(audio[int(0.2 * RATE) : int(2.0 * RATE)], RATE), wanted)) < 3


def test_a_note_sounds_from_its_note_on_and_fades_after_its_note_off(library):
    renderer = MultisampleRenderer(RATE, 8.0)
    organ = build_instrument(library, ORGAN[0])
    phrase = Phrase("test", 120.0)
    phrase.note(0.5, 1.0, 45, 100)
    audio = renderer.play(organ, phrase, 3 * RATE, np.random.default_rng(0))
    rms = lambda a, b: float(np.sqrt(np.mean(audio[int(a * RATE) : int(b * RATE)] ** 2)))  # noqa: E731
    assert rms(0.0, 0.49) < 1e-4  # silence before the note (the file's leading silence trimmed)
    assert rms(0.6, 1.4) > 0.05
    assert rms(1.6, 3.0) < 1e-4  # 50 ms release after the note-off at 1.5 s


def test_velocity_picks_the_layer_and_a_missing_drum_key_gets_a_stand_in(library):
    renderer = MultisampleRenderer(RATE, 8.0)
    kit = build_instrument(library, KIT[0])
    assert {(s.key, s.layer) for s in kit.samples} == {(k, layer) for k in (36, 38, 42) for layer in (0, 1)}
    heard = {}
    for velocity in (20, 120):
        phrase = Phrase("test", 120.0)
        phrase.note(0.1, 0.2, 36, velocity)
        audio = renderer.play(kit, phrase, RATE, np.random.default_rng(0))
        heard[velocity] = frequency(audio[int(0.1 * RATE) : int(0.5 * RATE)], RATE)
    assert abs(heard[20] - 60.0) < 3 and abs(heard[120] - 90.0) < 3
    open_hat = Phrase("test", 120.0)
    open_hat.note(0.1, 0.2, 46, 100)  # no open hat in the kit: the closed one plays
    assert np.abs(renderer.play(kit, open_hat, RATE, np.random.default_rng(0))).max() > 0.05


def _render(compose_cfg, output, library, *overrides, sources=None):
    cfg = compose_cfg(
        "synth",
        [
            f"output={output}",
            "clips_per_class=8",
            "progress=false",
            "classes=[flute,organ,drums]",
            "splits.train.families=[made]",
            "splits.val.families=[other]",
            "splits.test.families=[tim]",
            "~sources.sf_GMbank",
            *overrides,
        ],
    )
    made = _source(library, flute=FLUTE, organ=ORGAN, drums=KIT)
    other = _source(library, "other", flute=FLUTE, drums=KIT)
    with open_dict(cfg):  # libraries of the test's own, as a user's conf/sources/<name>.yaml would add
        cfg.merge_with({"sources": {"made": made, "other": other, **(sources or {})}})
    return synth(cfg)


def _manifest(output):
    with (Path(output) / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def test_splits_by_family_and_the_family_in_the_paths_and_the_dataset(compose_cfg, library, tmp_path):
    output = _render(compose_cfg, tmp_path / "synth", library, "num_workers=2")
    rows = _manifest(output)
    by_split = {split: {r["family"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert by_split == {"train": {"made"}, "val": {"other"}, "test": {"tim"}}
    assert {r["label"] for r in rows if r["split"] == "val"} == {"flute", "drums"}  # no organ in `other`
    for row in rows:
        assert row["path"].startswith(f"{row['split']}/{row['label']}/{row['family']}/")
        expected = {"multisample"} if row["family"] != "tim" else {"fluidsynth", "tinysoundfont"}
        assert row["renderer"] in expected
    dataset = tmp_path / "synth.h5"
    prepare(
        compose_cfg(
            "prepare",
            [f"source={output}", f"output={dataset}", "progress=false", "num_workers=1", "classes=[flute,organ,drums]"],
        )
    )
    with h5py.File(dataset, "r") as f:
        families = {split: {s.decode().split("/")[2] for s in f[split]["source"][()]} for split in ("train", "val")}
    assert families == {"train": {"made"}, "val": {"other"}}


def test_same_seed_same_audio_whatever_the_workers(compose_cfg, library, tmp_path):
    one = _render(compose_cfg, tmp_path / "one", library, "num_workers=1", "splits.test.fraction=0")
    two = _render(compose_cfg, tmp_path / "two", library, "num_workers=2", "splits.test.fraction=0")
    other = _render(compose_cfg, tmp_path / "seed7", library, "num_workers=1", "splits.test.fraction=0", "seed=7")
    files = sorted(p.relative_to(one) for p in one.rglob("*.flac"))
    assert len(files) == len(_manifest(one)) > 10
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert any((one / name).read_bytes() != (other / name).read_bytes() for name in files)


def test_a_missing_sample_library_is_skipped_with_one_line(compose_cfg, library, tmp_path, caplog):
    gone = _source(tmp_path / "not-installed", "other", flute=FLUTE)
    with caplog.at_level(logging.WARNING):
        output = _render(
            compose_cfg,
            tmp_path / "synth",
            library,
            "num_workers=1",
            "splits.test.fraction=0",
            sources={"absent": gone},
        )
    skipped = [r.getMessage() for r in caplog.records if "absent" in r.getMessage()]
    assert len(skipped) == 1 and "not-installed" in skipped[0] and "made by the test" in skipped[0]
    assert {r["source"] for r in _manifest(output)} == {"made", "other"}


def test_prepare_splits_a_manifest_by_family(compose_cfg, library, tmp_path):
    output = _render(compose_cfg, tmp_path / "synth", library, "num_workers=2")
    manifest = output / "manifest.csv"

    def prepare_with(source, family_splits):
        overrides = [f"source={source}", f"output={tmp_path / 'fold.h5'}", "overwrite=true", "progress=false"]
        overrides += ["num_workers=1", "classes=[flute,organ,drums]", f"family_splits={family_splits}"]
        return prepare(compose_cfg("prepare", overrides))

    prepare_with(manifest, "{val: [tim], test: [made]}")
    with h5py.File(tmp_path / "fold.h5", "r") as f:
        families = {split: {s.decode().split("/")[2] for s in f[split]["source"][()]} for split in f}
    assert families == {"train": {"other"}, "val": {"tim"}, "test": {"made"}}  # the unnamed family trains
    with pytest.raises(AmirError, match="needs a manifest with a family column"):
        prepare_with(output, "{test: [made]}")
    with pytest.raises(AmirError, match=r"no recording of the families \['nowhere'\]"):
        prepare_with(manifest, "{test: [nowhere]}")
    with pytest.raises(AmirError, match="named for val and test"):
        prepare_with(manifest, "{val: [made], test: [made]}")


def test_a_generated_room_adds_a_decaying_tail_and_a_microphone_a_smooth_colour():
    from amir_pl.dataset.synth.render import in_a_room, through_a_microphone

    click = np.zeros(RATE, dtype=np.float32)
    click[int(0.1 * RATE)] = 0.8
    room = in_a_room(click, RATE, 0.6, np.random.default_rng(0))
    again = in_a_room(click, RATE, 0.6, np.random.default_rng(0))
    assert room.shape == click.shape and np.array_equal(room, again)
    assert abs(float(np.abs(room).max()) - 0.8) < 1e-5  # the peak kept
    energy = lambda a, b: float(np.sum(room[int(a * RATE) : int(b * RATE)] ** 2))  # noqa: E731
    assert energy(0.0, 0.099) < 1e-12  # nothing before the sound (FFT rounding only)
    assert energy(0.15, 0.3) > energy(0.3, 0.45) > energy(0.45, 0.6) > 0  # a decaying tail
    noise = np.random.default_rng(1).standard_normal(4 * RATE).astype(np.float32) * 0.1
    coloured = through_a_microphone(noise, RATE, 8.0, np.random.default_rng(2))
    ratio_db = 20 * np.log10(np.abs(np.fft.rfft(coloured)) / np.abs(np.fft.rfft(noise)))
    freqs = np.fft.rfftfreq(len(noise), 1 / RATE)
    band = (freqs > 30) & (freqs < RATE / 2 - 10)
    level = np.log10(np.abs(noise).max() / np.abs(coloured).max()) * 20  # the peak normalisation's offset
    assert np.ptp(ratio_db[band]) > 3 and np.all(np.abs(ratio_db[band] + level) <= 8.0 + 1e-3)
    assert np.abs(np.diff(ratio_db[band])).max() < 0.05  # smooth: no step between neighbouring bins (0.25 Hz)


def test_rooms_and_microphones_are_drawn_and_written_to_the_manifest(compose_cfg, library, tmp_path):
    rooms = ("num_workers=1", "room_probability=1", "mic_probability=1")
    output = _render(compose_cfg, tmp_path / "rooms", library, *rooms, "room_splits=[train,val,test]")
    rows = _manifest(output)
    assert all(0.2 <= float(r["room_rt60"]) <= 1.0 and 3.0 <= float(r["mic_db"]) <= 8.0 for r in rows)
    plain_output = _render(compose_cfg, tmp_path / "plain", library, "num_workers=1")
    assert all(r["room_rt60"] == "" and r["mic_db"] == "" for r in _manifest(plain_output))
    # By default only training clips get rooms: validation and test clips are the plain render's, byte for byte.
    default_output = _render(compose_cfg, tmp_path / "default", library, *rooms)
    for row in _manifest(default_output):
        same = (default_output / row["path"]).read_bytes() == (plain_output / row["path"]).read_bytes()
        assert (row["room_rt60"] != "") == (row["split"] == "train") and same == (row["split"] != "train"), row
    with pytest.raises(AmirError, match=r"room_splits=\['trian'\]"):
        _render(compose_cfg, tmp_path / "bad", library, "room_splits=[trian]")


def test_a_source_config_missing_what_its_kind_needs_is_one_clear_error(compose_cfg, library, tmp_path):
    for spec, message in (
        ({"family": "x", "kind": "samples", "install": "-"}, r"sources.bad: a samples source needs root"),
        (_source(library, "x", guitar=FLUTE), r"sources.bad.instruments.guitar: not a class"),
        (
            _source(library, "x", flute=[{"folder": "flute"}]),
            r"sources.bad.instruments.flute\[0\]: give the instrument a name",
        ),
        ({"family": "x", "kind": "soundfont", "install": "-"}, r"sources.bad.path: a soundfont source needs"),
    ):
        with pytest.raises(AmirError, match=message):
            _render(compose_cfg, tmp_path / "bad", library, "splits.val.families=[x]", sources={"bad": spec})
    with pytest.raises(AmirError, match="mic_db=2.0"):
        _render(compose_cfg, tmp_path / "bad", library, "mic_db=2")


def test_a_note_far_from_every_sample_is_played_an_octave_nearer(library):
    renderer = MultisampleRenderer(RATE, 8.0)
    flute = build_instrument(library, FLUTE[0])  # samples at 57, 69, 72, 78
    phrase = Phrase("test", 120.0)
    phrase.note(0.1, 2.0, 98, 100)  # 20 semitones above the highest sample: played at 86
    audio = renderer.play(flute, phrase, 3 * RATE, np.random.default_rng(0))
    assert abs(cents(frequency(audio[int(0.2 * RATE) : int(2.0 * RATE)], RATE), 440.0 * 2 ** ((86 - 69) / 12))) < 3


def test_few_samples_keeps_some_sampled_notes_in_every_layer_and_drums_whole(library, tmp_path):
    flute = build_instrument(library, FLUTE[0])  # samples at 57, 69, 72, 78
    kit = build_instrument(library, KIT[0])
    draws = [flute.with_few_samples(2, np.random.default_rng(seed)) for seed in range(20)]
    for few in draws:
        assert len(few.samples) == 2 and {s.key for s in few.samples} <= {57, 69, 72, 78}
        assert few.samples[0].key != few.samples[1].key
    assert len({tuple(s.key for s in few.samples) for few in draws}) > 2  # drawn, not always the same two

    def keys(seed):
        return [s.key for s in flute.with_few_samples(2, np.random.default_rng(seed)).samples]

    assert keys(3) == keys(3)  # from the generator alone
    assert len(flute.samples) == 4  # the instrument itself is untouched
    assert flute.with_few_samples(9, np.random.default_rng(0)) is flute  # no fewer than asked: whole
    assert kit.with_few_samples(1, np.random.default_rng(0)) is kit  # one-shots: every drum kept
    for name, midi in (("A3", 57), ("A4", 69), ("C5", 72)):  # a melodic instrument in two velocity layers
        for layer in ("soft", "hard"):
            write_note(tmp_path / "layered" / f"{name}_{layer}.wav", 440.0 * 2 ** ((midi - 69) / 12), seconds=0.5)
    layered = build_instrument(tmp_path, {"name": "layered", "folder": "layered", "layers": ["soft", "hard"]})
    one = layered.with_few_samples(1, np.random.default_rng(0))
    assert len({s.key for s in one.samples}) == 1 and sorted(s.layer for s in one.samples) == [0, 1]


def test_few_samples_plays_every_note_from_the_kept_one_transposed(library):
    renderer = MultisampleRenderer(RATE, 8.0)
    flute = build_instrument(library, FLUTE[0])  # samples at 57, 69, 72, 78
    one = flute.with_few_samples(1, np.random.default_rng(1))
    (kept,) = one.samples
    rng = np.random.default_rng(0)
    # a note 5 semitones from the kept sample, for which the whole flute has a nearer one
    key = next(k for k in (kept.key - 5, kept.key + 5) if flute.pick(k, 100, rng, {})[0] is not kept)
    assert one.pick(key, 100, rng, {})[0] is kept
    phrase = Phrase("test", 120.0)
    phrase.note(0.1, 2.0, key, 100)
    audio = renderer.play(one, phrase, 3 * RATE, np.random.default_rng(0))
    wanted = 440.0 * 2 ** ((key - 69) / 12)
    assert abs(cents(frequency(audio[int(0.2 * RATE) : int(2.0 * RATE)], RATE), wanted)) < 3


def test_few_samples_in_training_clips_only_and_named_in_the_manifest(compose_cfg, library, tmp_path):
    few = ("num_workers=1", "few_samples.probability=1", "few_samples.samples=[1,1]", "accompaniment.probability=1")
    output = _render(compose_cfg, tmp_path / "few", library, *few, "splits.test.fraction=0")
    plain = _render(
        compose_cfg,
        tmp_path / "plain",
        library,
        "num_workers=1",
        "accompaniment.probability=1",
        "splits.test.fraction=0",
    )
    for row in _manifest(output):
        marked = row["instrument"].endswith("[1 of its notes]")
        same = (output / row["path"]).read_bytes() == (plain / row["path"]).read_bytes()
        melodic_train = row["split"] == "train" and row["label"] != "drums"
        assert marked == (melodic_train and row["label"] == "flute"), row  # the organ has one note: played whole
        assert same == (row["split"] != "train"), row  # validation clips and their accompaniment: no draw
    for bad in ("probability=2", "samples=[0,2]", "samples=[3,2]", "splits=[trian]"):
        with pytest.raises(AmirError, match="few_samples"):
            _render(compose_cfg, tmp_path / "bad", library, "few_samples.probability=0.5", f"few_samples.{bad}")
    # Off, its options are not read: a render without a training split keeps the default splits=[train].
    _render(compose_cfg, tmp_path / "test_only", library, "num_workers=1", "~splits.train", "~splits.val")


@pytest.fixture(scope="module")
def takes(tmp_path_factory):
    """Long solo takes, each a slow chirp (so that every excerpt differs): one at the output rate, one in
    stereo at 44.1 kHz (decoded to mono and resampled), one whose second half is a pause 40 dB down; and
    a short one."""
    root = tmp_path_factory.mktemp("takes")
    t = np.arange(12 * 44100) / 44100
    chirp = {hz: 0.3 * np.sin(2 * np.pi * (hz + 5 * t) * t) for hz in (300.0, 500.0, 700.0)}
    for name in ("one", "two", "paused"):
        (root / "band" / name).mkdir(parents=True)
    sf.write(str(root / "band" / "one" / "flute.wav"), chirp[300.0][::2][: 12 * RATE], RATE)
    sf.write(str(root / "band" / "two" / "flute.wav"), np.stack([chirp[500.0], chirp[500.0]], axis=1), 44100)
    paused = chirp[700.0][::2][: 12 * RATE].copy()
    paused[6 * RATE :] *= 0.01
    sf.write(str(root / "band" / "paused" / "flute.wav"), paused, RATE)
    (root / "short").mkdir()
    sf.write(str(root / "short" / "flute.wav"), chirp[300.0][:44100], 44100)
    return root


def _recordings(root, family="rec", **instruments):
    return {"family": family, "kind": "recordings", "root": str(root), "install": "-", "instruments": instruments}


def _excerpt_start(clip, take, start, rate=RATE):
    """Where in ``take`` (read at ``rate``) ``clip`` was cut, searched 10 ms around ``start`` seconds, and
    the normalised correlation there."""
    begin = max(0, round(start * rate) - 220)
    around = take[begin : round(start * rate) + len(clip) + 220]
    energy = np.sqrt(np.convolve(around**2, np.ones(len(clip)), "valid"))
    correlation = np.correlate(around, clip, "valid") / (np.linalg.norm(clip) * energy)
    return begin + int(np.argmax(correlation)), float(correlation.max())


BAND = [{"name": "band", "files": "band/*/flute.wav"}]


def test_a_recordings_source_plays_excerpts_of_its_files_the_same_whatever_the_workers(
    compose_cfg, library, takes, tmp_path
):
    sources = {"rec": _recordings(takes, flute=BAND)}
    overrides = (
        "splits.train.families=[made,rec]",
        "noise_probability=0",
        "splits.test.fraction=0",
        "clips_per_class=24",
    )
    one = _render(compose_cfg, tmp_path / "one", library, "num_workers=1", *overrides, sources=sources)
    two = _render(compose_cfg, tmp_path / "two", library, "num_workers=2", *overrides, sources=sources)
    rows = [r for r in _manifest(one) if r["family"] == "rec"]
    assert rows and {r["label"] for r in rows} == {"flute"} and {r["renderer"] for r in rows} == {"recording"}
    assert {r["style"] for r in rows} == {"recording"} and {r["tempo"] for r in rows} == {""}
    played = set()
    for row in rows:
        name, start = re.fullmatch(r"band: (band/\w+/flute\.wav) at ([0-9.]+) s", row["instrument"]).groups()
        played.add(name)
        clip, _ = sf.read(str(one / row["path"]))
        take = RecordingPlayer(RATE)._load(str(takes / name))[0]  # as the source plays it: mono, 22,050 Hz
        at, correlation = _excerpt_start(clip, take, float(start))
        assert correlation > 0.999, row["path"]  # the excerpt itself, peak-normalised
        assert name != "band/paused/flute.wav" or at < 6 * RATE  # never wholly inside the pause
        assert (one / row["path"]).read_bytes() == (two / row["path"]).read_bytes()
    assert played == {"band/one/flute.wav", "band/two/flute.wav", "band/paused/flute.wav"}
    stereo, _ = sf.read(str(takes / "band" / "two" / "flute.wav"))
    assert len(RecordingPlayer(RATE)._load(str(takes / "band" / "two" / "flute.wav"))[0]) == len(stereo) // 2


def test_a_pause_in_a_recording_is_silent_and_drawn_again():
    player = RecordingPlayer(RATE)
    rng = np.random.default_rng(0)
    t = np.arange(8 * RATE) / RATE
    take = np.sin(2 * np.pi * 440 * t)
    take[4 * RATE :] *= 10 ** (-35 / 20)  # 35 dB down: below QUIET_DB under the file's RMS
    player.decoded["take"] = (take.astype(np.float32), float(np.sqrt(np.mean(take**2))))
    recordings = RecordingSet("t", "", ("take",))
    for _ in range(30):
        excerpt, played = player.excerpt(recordings, RATE, rng)
        start = round(float(played.rsplit(" at ", 1)[1][:-2]) * RATE)
        assert (np.abs(excerpt).max() == 0) == (start >= 4 * RATE + RATE // 100)  # silent only inside the pause


def test_recordings_play_over_accompaniment_and_as_it(compose_cfg, library, takes, tmp_path):
    sources = {"rec": _recordings(takes, flute=BAND)}
    output = _render(
        compose_cfg,
        tmp_path / "acc",
        library,
        "splits.train.families=[made,rec]",
        "accompaniment.probability=1.0",
        "splits.test.fraction=0",
        "clips_per_class=12",
        sources=sources,
    )
    rows = [r for r in _manifest(output) if r["split"] == "train"]
    led = [r for r in rows if r["family"] == "rec" and r["accompaniment_sources"]]
    backed = [r for r in rows if r["family"] != "rec" and "rec" in r["accompaniment_sources"].split(";")]
    assert led and backed  # a recording over accompaniment, and a recording accompanying a phrase
    for row in led + backed:
        assert sf.read(str(output / row["path"]))[0].std() > 0.01


def test_recordings_that_are_missing_short_or_unnamed_are_skipped_or_refused(
    compose_cfg, library, takes, tmp_path, caplog
):
    gone = {"rec": _recordings(takes, flute=[{"name": "gone", "files": "nowhere/*.wav"}])}
    with caplog.at_level(logging.WARNING):
        output = _render(compose_cfg, tmp_path / "gone", library, "splits.train.families=[made,rec]", sources=gone)
    assert "source rec: gone skipped" in caplog.text and "nowhere/*.wav" in caplog.text
    assert not [r for r in _manifest(output) if r["family"] == "rec"]
    unnamed = {"bad": _recordings(takes, "x", flute=[{"name": "band"}])}
    with pytest.raises(AmirError, match=r"sources.bad.instruments.flute\[0\]: give files, a glob pattern under root"):
        _render(compose_cfg, tmp_path / "bad", library, "splits.val.families=[x]", sources=unnamed)
    (takes / "notes").mkdir(exist_ok=True)
    (takes / "notes" / "flute.txt").write_text("not audio")
    with pytest.raises(
        AmirError, match=r"notes/flute.txt: not an audio file soundfile reads .*narrow the source's files"
    ):
        find_recordings(takes, {"name": "any", "files": "notes/*"})
    with pytest.raises(AmirError, match=r"files='/abs/\*.wav' is not a pattern under root"):
        find_recordings(takes, {"name": "abs", "files": "/abs/*.wav"})
    # takes shorter than the longest part asked of them are left out (and named), none left: not found
    kept, short = find_recordings(takes, {"name": "all", "files": "**/flute.wav"}, 3.0)
    assert short == ["short/flute.wav"] and len(kept.files) == 3
    with pytest.raises(FileNotFoundError, match="3 files shorter than 20.0 s"):
        find_recordings(takes, {"name": "band", "files": "band/*/flute.wav"}, 20.0)
    with caplog.at_level(logging.WARNING):
        everything = {"rec": _recordings(takes, flute=[{"name": "all", "files": "**/flute.wav"}])}
        _render(compose_cfg, tmp_path / "short", library, "splits.train.families=[made,rec]", sources=everything)
    assert "source rec: all files shorter than 3.0 s left out: ['short/flute.wav']" in caplog.text
    with pytest.raises(AmirError, match=r"short/flute.wav: shorter than the part asked of it"):
        RecordingPlayer(RATE).excerpt(
            RecordingSet("s", str(takes), ("short/flute.wav",)), 3 * RATE, np.random.default_rng(0)
        )
