"""What every Hydra app shares: user-facing errors, reported in one line instead of a traceback."""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue


class AmirError(Exception):
    """An error the user can fix; its message names the file or option and the fix."""


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


# The Hydra configs live in the repository's top-level conf/ (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
