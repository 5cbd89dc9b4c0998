"""What every console script shares: the packaged configs, and errors a user can fix as one line."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from amir_pl.core.errors import AmirError

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


@contextmanager
def user_errors(app: str):
    """Turn AmirError and missing mandatory options into ``<app>: error: ...`` and exit status 2.

    Also silences a deprecation warning that Lightning 2.6 triggers inside torch >= 2.10
    at every loop start (``isinstance(treespec, LeafSpec)``): it is not the user's to fix.
    """
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        yield
    except Exception as error:
        cause = _user_error(error)
        if cause is None:
            raise
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
            with user_errors(app):
                run(cfg)

        return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(task)

    return decorate
