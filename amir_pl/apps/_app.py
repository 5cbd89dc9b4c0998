"""What every console script shares: the packaged configs, errors a user can fix as one line (exit
status 2), and faults of the machine (a full disk, a read-only folder) as one line too (exit status 1)."""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from amir_pl.core.errors import AmirError
from amir_pl.core.files import intended_path

# conf/ at the top of the repository, shipped in the wheel as the package amir_pl.conf.
CONFIG_PATH = "pkg://amir_pl.conf"


def _user_error(error: BaseException) -> BaseException | None:
    """The AmirError behind ``error``, also when Hydra's instantiate wrapped it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (AmirError, MissingMandatoryValue)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# errno -> (the cause in words, what to do about it first); the option that moves the output follows.
FILE_SYSTEM_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free space on that disk, or "),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota, or "),
    errno.EROFS: ("read-only file system", ""),
    errno.EACCES: ("permission denied", ""),
    errno.EPERM: ("operation not permitted", ""),
    errno.ENOENT: ("no such file or folder (removed while the run used it?)", "check the path, or "),
    errno.EIO: ("input/output error (a failing disk or network share?)", "check the disk, or "),
}
# The option that moves what each app writes, beside the run folder (hydra.run.dir / paths.root_dir).
OUTPUT_OPTIONS = {"amir-prepare": "output", "amir-synth": "output", "amir-export": "output"}


def _file_system_fault(error: BaseException) -> tuple[int, str | None] | None:
    """``(errno, path)`` of the file system fault behind ``error`` (itself or what it was raised from;
    not an error that merely happened while handling another), or None. h5py and libraries that wrap
    the C library's error put the number and the file name in the message only."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            text = str(error)
            number = error.errno
            if number is None and (found := re.search(r"errno = (\d+)", text)):
                number = int(found.group(1))
            path = error.filename
            if path is None and (found := re.search(r"name = '([^']+)'", text)):
                path = found.group(1)
            if number in FILE_SYSTEM_FAULTS:
                return number, None if path is None else str(path)
        error = error.__cause__
    return None


def _inside(path: str | None, folder) -> bool:
    if path is None or not folder:
        return False
    try:
        return Path(path).resolve().is_relative_to(Path(str(folder)).resolve())
    except (OSError, ValueError):
        return False


def fault_message(app: str, number: int, path: str | None, cfg: DictConfig | None = None) -> str:
    """One line: what failed, where, and what to do (free space, or the option that moves the output)."""
    cause, first = FILE_SYSTEM_FAULTS[number]
    option = OUTPUT_OPTIONS.get(app)
    output = cfg.get(option) if option and cfg is not None else None
    run_dir = cfg.get("paths", {}).get("output_dir") if cfg is not None else None
    if output and (path is None or _inside(path, Path(str(output)).expanduser().parent)):
        move = f"write it elsewhere with {option}=<path>"
    elif cfg is None or path is None or _inside(path, run_dir):  # cfg None: the run folder itself
        move = "choose another run folder with hydra.run.dir=<folder> or paths.root_dir=<folder>"
    else:
        move = "check that folder"
    where = f": {intended_path(path)}" if path else ""
    return f"{app}: error: {cause}{where}; {first}{move} (HYDRA_FULL_ERROR=1 shows the traceback)"


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


@contextmanager
def user_errors(app: str, cfg: DictConfig | None = None):
    """Turn AmirError and missing mandatory options into ``<app>: error: ...`` and exit status 2, and a
    file system fault (no space, read-only, permission denied, ...) into one line and exit status 1
    (``HYDRA_FULL_ERROR=1``: the traceback instead).

    Also silences a deprecation warning that Lightning 2.6 triggers inside torch >= 2.10
    at every loop start (``isinstance(treespec, LeafSpec)``): it is not the user's to fix.
    """
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        yield
    except Exception as error:
        cause = _user_error(error)
        if cause is None:
            fault = None if _full_error() else _file_system_fault(error)
            if fault is None:
                raise
            print(fault_message(app, *fault, cfg), file=sys.stderr)
            sys.exit(1)
        if isinstance(cause, MissingMandatoryValue):
            key = getattr(cause, "full_key", None) or "a mandatory option"
            message = f"{key} is required; add {key}=<value> to the command line"
        else:
            message = str(cause)
        print(f"{app}: error: {message}", file=sys.stderr)
        sys.exit(2)


def hydra_app(app: str, config_name: str) -> Callable[[Callable[[DictConfig], object]], Callable[[], None]]:
    """Make ``run(cfg)`` the console script ``app``: Hydra composes ``conf/<config_name>.yaml`` and the
    command line, and errors a user can fix end the program with one line and exit status 2."""

    def decorate(run: Callable[[DictConfig], object]) -> Callable[[], None]:
        @functools.wraps(run)  # keeps run's module: Hydra names the job (and its log file) after it
        def task(cfg: DictConfig) -> None:
            with user_errors(app, cfg):
                run(cfg)

        return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(task)

    return decorate


class RunFolderCheck(Callback):
    """Makes the run folder before Hydra does, so that a read-only or full disk is one line and exit
    status 1, not an ``os.mkdir`` traceback from inside Hydra (conf/hydra/default.yaml registers it).
    It exits itself: Hydra turns an exception raised in a callback into a warning and goes on."""

    def _check(self, folder, config: DictConfig) -> None:
        if _full_error():
            return
        app = "amir-" + str(config.hydra.job.name).replace("_", "-")
        folder = Path(str(folder))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".amir-write-check.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            fault = _file_system_fault(error)
            if fault is None:
                raise
            print(fault_message(app, fault[0], str(error.filename or folder)), file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, config)
