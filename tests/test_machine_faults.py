"""Faults of the machine, injected into each app: a write that fails with ENOSPC, EROFS or EACCES at the
n-th call. Each app ends with one line (the app, the cause in words, the path, the fix), exit status 1,
the files written before the fault intact and no temporary file left. Ctrl-C (SIGINT) to a real
amir-train process: tests/test_fault_tolerance.py."""

import errno
import os
from pathlib import Path

import pytest
import torch
from conftest import FAST
from omegaconf import OmegaConf
from test_evaluate_recordings import labelled_folder
from test_prepare import audio_tree, run_prepare, write_tone  # noqa: F401 (audio_tree: a fixture)
from test_synth import _render, needs_font

from amir_pl.apps._app import RunFolderCheck, user_errors
from amir_pl.core.errors import AmirError
from amir_pl.core.files import intended_path, write_fault
from amir_pl.dataset.prepare import prepare
from amir_pl.dataset.schema import DatasetWriter
from amir_pl.dataset.synth import synth
from amir_pl.inference.export import export
from amir_pl.inference.predict import predict
from amir_pl.inference.recordings import evaluate_recordings
from amir_pl.training.baseline import baseline
from amir_pl.training.scoring import evaluate
from amir_pl.training.train import train

CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


def fail_at(monkeypatch, owner, name: str, call: int, number: int, path_of=lambda args: args[1], partial=True):
    """Make ``owner.name`` raise OSError(number) at its ``call``-th call, naming the file ``path_of(args)``
    and, with ``partial``, after writing a few bytes to it (a write cut short by a full disk); earlier
    calls go through."""
    real = getattr(owner, name)
    calls = []

    def faulty(*args, **kwargs):
        calls.append(args)
        if len(calls) < call:
            return real(*args, **kwargs)
        path = path_of(args)
        if partial and isinstance(path, (str, os.PathLike)):
            Path(path).write_bytes(b"partial")
        raise OSError(number, os.strerror(number), None if path is None else str(path))

    monkeypatch.setattr(owner, name, faulty)
    return calls


def run_app(app: str, cfg, function, capsys) -> str:
    """Run ``function(cfg)`` as the console script ``app`` runs it; return its one line of error."""
    with pytest.raises(SystemExit) as stopped, user_errors(app, cfg):
        function(cfg)
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".unshuffled")]


def test_amir_train_full_disk_at_the_third_checkpoint(compose_cfg, tiny_h5, tmp_path, monkeypatch, capsys):
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=3", "logger=csv"])
    calls = fail_at(monkeypatch, torch, "save", 3, errno.ENOSPC)
    line = run_app("amir-train", cfg, train, capsys)
    assert len(calls) == 3
    target = intended_path(calls[-1][1])
    assert line.startswith(f"amir-train: error: no space left on the device: {target}; free space on that disk, or ")
    assert "paths.root_dir=" in line
    kept = sorted((tmp_path / "checkpoints").iterdir())
    assert kept and not temporary_files(tmp_path)
    for path in kept:  # the checkpoints written before the fault load
        assert torch.load(path, map_location="cpu", weights_only=True)["global_step"] > 0


def test_amir_prepare_full_disk_keeps_the_previous_file(compose_cfg, audio_tree, tmp_path, monkeypatch, capsys):  # noqa: F811
    output = tmp_path / "data" / "set.h5"
    run_prepare(compose_cfg, audio_tree, output)
    before = output.read_bytes()
    cfg = compose_cfg(
        "prepare",
        [f"source={audio_tree}", f"output={output}", "classes=[piano,flute,cello]", "progress=false", "num_workers=1"],
    )
    cfg.overwrite = True
    fail_at(monkeypatch, DatasetWriter, "append", 2, errno.ENOSPC, path_of=lambda args: str(args[0].tmp_path))
    line = run_app("amir-prepare", cfg, prepare, capsys)
    assert line.startswith(f"amir-prepare: error: no space left on the device: {output}; free space on that disk, or ")
    assert line.endswith("write it elsewhere with output=<path> (HYDRA_FULL_ERROR=1 shows the traceback)")
    assert output.read_bytes() == before  # the file of the earlier run is untouched
    assert not temporary_files(tmp_path)


@needs_font
@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EACCES])
def test_amir_synth_fault_part_way_then_a_rerun_says_how_to_start_over(
    compose_cfg, tmp_path, monkeypatch, capsys, number
):
    import soundfile

    output = tmp_path / "synth"
    # the 5th file fails (the one worker process, forked after the patch, counts its own calls)
    fail_at(monkeypatch, soundfile, "write", 5, number, path_of=lambda args: args[0])
    cfg = compose_cfg("synth", [f"output={output}"])
    with pytest.raises(SystemExit) as stopped, user_errors("amir-synth", cfg):
        _render(compose_cfg, output, "num_workers=1")
    assert stopped.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    first = "free space on that disk, or " if number == errno.ENOSPC else ""
    assert line.startswith(f"amir-synth: error: {CAUSES[number]}: {output}/")
    assert line.endswith(
        f".flac; {first}write it elsewhere with output=<path> (HYDRA_FULL_ERROR=1 shows the traceback)"
    )
    written = sorted(output.rglob("*.flac"))
    assert len(written) == 4 and all(soundfile.info(str(p)).frames > 0 for p in written)  # the 4 before the fault
    assert not temporary_files(output) and not (output / "manifest.csv").exists()
    monkeypatch.undo()
    with pytest.raises(AmirError, match="did not finish .* add overwrite=true to render it again from the start"):
        _render(compose_cfg, output)


def test_libsndfile_system_error_is_named_by_what_the_disk_says(tmp_path, monkeypatch):
    error = RuntimeError("System error.")
    path = tmp_path / "clip.flac"
    assert write_fault(path, error) is error  # a disk with room and permission: the error as it was

    class Full:
        f_flag, f_bavail, f_frsize = 0, 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda folder: Full)
    assert write_fault(path, error).errno == errno.ENOSPC and write_fault(path, error).filename == str(path)
    Full.f_flag = os.ST_RDONLY
    assert write_fault(path, error).errno == errno.EROFS


@pytest.mark.parametrize("fmt, function", [("torchscript", "jit.save"), ("torch_export", "export.save")])
def test_amir_export_read_only_output(compose_cfg, checkpoint, tmp_path, monkeypatch, capsys, fmt, function):
    module_name, name = function.split(".")
    output = tmp_path / "models" / f"model.{'ts' if fmt == 'torchscript' else 'pt2'}"
    cfg = compose_cfg("export", [f"ckpt_path={checkpoint}", f"format={fmt}", f"output={output}"])
    fail_at(monkeypatch, getattr(torch, module_name), name, 1, errno.EROFS, path_of=lambda args: None)
    line = run_app("amir-export", cfg, export, capsys)
    assert line.startswith("amir-export: error: read-only file system")
    assert "output=<path>" in line
    assert not output.exists() and not temporary_files(tmp_path)


def _replace_fails(monkeypatch, number, call=1):
    import amir_pl.core.files as files

    # the rename that completes a file: the temporary file is complete, the target not yet there
    return fail_at(monkeypatch, files.os, "replace", call, number, path_of=lambda args: str(args[1]), partial=False)


@pytest.mark.parametrize("number", [errno.EACCES, errno.ENOSPC])
def test_amir_predict_reports_fault(compose_cfg, checkpoint, tmp_path, monkeypatch, capsys, number):
    tone = write_tone(tmp_path / "in" / "tone.wav", 2.0, 22050, 440.0)
    cfg = compose_cfg("predict", [f"ckpt_path={checkpoint}", f"inputs={tone}", "num_workers=0", "progress=false"])
    _replace_fails(monkeypatch, number, call=2)  # predictions.json written, predictions.csv not
    line = run_app("amir-predict", cfg, predict, capsys)
    assert line.startswith(f"amir-predict: error: {CAUSES[number]}")
    assert "hydra.run.dir=<folder> or paths.root_dir=<folder>" in line
    assert "predictions.csv" in line  # the second file; the first is complete
    assert (tmp_path / "predictions.json").is_file() and not (tmp_path / "predictions.csv").exists()
    assert not temporary_files(tmp_path)


def test_amir_evaluate_reports_fault(compose_cfg, checkpoint, tiny_h5, tmp_path, monkeypatch, capsys):
    cfg = compose_cfg(
        "evaluate",
        [f"ckpt_path={checkpoint}", f"data.path={tiny_h5}", "data.num_workers=0", "trainer.enable_progress_bar=false"],
    )
    _replace_fails(monkeypatch, errno.EROFS)
    line = run_app("amir-evaluate", cfg, evaluate, capsys)
    assert line.startswith("amir-evaluate: error: read-only file system: ")
    assert not temporary_files(tmp_path)


def test_amir_evaluate_recordings_reports_fault(compose_cfg, checkpoint, tmp_path, monkeypatch, capsys):
    test = labelled_folder(tmp_path / "test", {"t1": ["pia"], "t2": ["cel"]})
    cfg = compose_cfg("evaluate_recordings", [f"ckpt_path={checkpoint}", f"inputs={test}", "num_workers=0"])
    _replace_fails(monkeypatch, errno.ENOSPC)
    line = run_app("amir-evaluate-recordings", cfg, evaluate_recordings, capsys)
    assert line.startswith("amir-evaluate-recordings: error: no space left on the device: ")
    assert not temporary_files(tmp_path)


def test_amir_baseline_reports_fault(compose_cfg, tiny_h5, tmp_path, monkeypatch, capsys):
    cfg = compose_cfg("baseline", [f"data.path={tiny_h5}"])
    _replace_fails(monkeypatch, errno.EACCES)
    line = run_app("amir-baseline", cfg, baseline, capsys)
    assert line.startswith("amir-baseline: error: permission denied: ")
    assert not temporary_files(tmp_path)


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == tmp_path / "ro" / "run":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    config = {"hydra": {"job": {"name": "train"}, "run": {"dir": str(tmp_path / "ro" / "run")}}}
    with pytest.raises(SystemExit) as stopped:
        RunFolderCheck().on_run_start(config=OmegaConf.create(config))
    assert stopped.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line == (
        f"amir-train: error: read-only file system: {tmp_path}/ro/run; choose another run folder with "
        "hydra.run.dir=<folder> or paths.root_dir=<folder> (HYDRA_FULL_ERROR=1 shows the traceback)"
    )


def test_hydra_full_error_shows_the_traceback(compose_cfg, tiny_h5, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"])
    fail_at(monkeypatch, torch, "save", 1, errno.ENOSPC)
    with pytest.raises(OSError, match="No space left"), user_errors("amir-train", cfg):
        train(cfg)


def test_amir_train_warns_when_the_disk_cannot_hold_the_checkpoints(compose_cfg, tiny_h5, a_full_disk, caplog):
    cfg = compose_cfg("train", [f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"])
    with caplog.at_level("WARNING"):
        train(cfg)
    warnings = [r.getMessage() for r in caplog.records if "MB free" in r.getMessage()]
    assert len(warnings) == 1 and "3 checkpoints of" in warnings[0] and "paths.root_dir=" in warnings[0]


@pytest.fixture
def a_full_disk(monkeypatch):
    import shutil

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))


def test_amir_prepare_warns_from_the_number_of_clips(compose_cfg, audio_tree, tmp_path, a_full_disk, caplog):  # noqa: F811
    with caplog.at_level("WARNING"):
        run_prepare(compose_cfg, audio_tree, tmp_path / "set.h5")
    warnings = [r.getMessage() for r in caplog.records if "MB free" in r.getMessage()]
    assert len(warnings) == 1 and "the dataset file and its staging copy need about" in warnings[0]


@needs_font
def test_amir_synth_warns_from_the_number_of_clips(compose_cfg, tmp_path, a_full_disk, caplog):
    with caplog.at_level("WARNING"):
        _render(compose_cfg, tmp_path / "synth")
    warnings = [r.getMessage() for r in caplog.records if "MB free" in r.getMessage()]
    assert len(warnings) == 1 and "the rendered files need about" in warnings[0] and "output=" in warnings[0]


def test_an_error_raised_while_handling_a_file_error_is_not_taken_for_one():
    from amir_pl.apps._app import _file_system_fault

    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file", "/x")
        except OSError:
            raise TypeError("a bug in the handler")  # noqa: B904 (the point of the test)
    except TypeError as bug:
        assert _file_system_fault(bug) is None
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/x.h5")
    assert _file_system_fault(wrapped) == (errno.ENOSPC, "/data/x.h5")


def test_advice_names_the_option_that_moves_the_failing_file(compose_cfg, tmp_path):
    from amir_pl.apps._app import fault_message

    cfg = compose_cfg("prepare", [f"output={tmp_path}/data/set.h5", "source=x"])
    assert fault_message("amir-prepare", errno.EROFS, f"{tmp_path}/data/.set.h5.12.tmp", cfg).endswith(
        f"read-only file system: {tmp_path}/data/set.h5; write it elsewhere with output=<path> "
        "(HYDRA_FULL_ERROR=1 shows the traceback)"
    )
    assert "hydra.run.dir=<folder>" in fault_message(
        "amir-prepare", errno.ENOSPC, f"{tmp_path}/prepare_report.json", cfg
    )
    assert "; check that folder (" in fault_message("amir-prepare", errno.EACCES, "/elsewhere/file", cfg)


def test_synth_refuses_a_folder_of_other_files_as_not_empty_not_as_an_unfinished_render(compose_cfg, tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "song.mp3").write_bytes(b"")
    cfg = compose_cfg("synth", [f"output={tmp_path / 'music'}"])
    with pytest.raises(AmirError, match="is not empty; add overwrite=true"):
        synth(cfg)


def test_loader_workers_leave_ctrl_c_and_sigterm_to_the_training_process():
    import signal

    from amir_pl.training.data import _worker_init

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _worker_init(0)
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in before)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_non_finite_weights_after_finite_losses_are_not_saved(tmp_path):
    from types import SimpleNamespace

    from amir_pl.training.fault_tolerance import NO_BAD_STEP, NonFiniteLoss, StopOnNonFiniteLoss

    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 0] = float("inf")
    module.device = torch.device("cpu")
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce=lambda value, reduce_op: value),
        global_step=7,
        current_epoch=1,
        checkpoint_callbacks=[],
    )
    callback = StopOnNonFiniteLoss()
    callback._first_bad = torch.tensor(NO_BAD_STEP)  # every loss was finite
    with pytest.raises(NonFiniteLoss, match=r"weights are not finite at step 7 \(epoch 1\).*optimizer\.lr="):
        callback.on_save_checkpoint(trainer, module, {})
