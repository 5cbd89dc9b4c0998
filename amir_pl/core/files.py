"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\d+\.tmp$")


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden name beside ``path``, unique to this process (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def intended_path(path: str | os.PathLike) -> Path:
    """The file a temporary name (``temporary_name``, or amir-prepare's hidden ``.<name>.unshuffled``
    staging file) stands for, to name in messages; any other path as it is."""
    path = Path(path)
    while found := _TEMPORARY.match(path.name):
        path = path.with_name(found.group("name"))
    if path.name.startswith(".") and path.name.endswith(".unshuffled"):
        path = path.with_name(path.name[1 : -len(".unshuffled")])
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file in the same folder, then rename it to ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_table(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV file's header and its rows as ``(line number, {column: value})``, names and values stripped
    of surrounding spaces, a byte-order mark (as spreadsheet programs write) ignored, a missing cell ''."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        rows = [
            (line, {key.strip(): (value or "").strip() for key, value in row.items() if isinstance(key, str)})
            for line, row in enumerate(reader, start=2)
        ]
    return fields, rows


def write_fault(path: str | os.PathLike, error: Exception) -> Exception:
    """An ``OSError`` naming ``path`` and the cause, for a library that failed to write it without saying
    why (libsndfile's "System error."): a full disk, a read-only file system or no permission; else
    ``error`` itself."""
    folder = Path(path).parent
    try:
        stats = os.statvfs(folder)
    except OSError as gone:
        return gone
    if stats.f_flag & os.ST_RDONLY:
        number = errno.EROFS
    elif not os.access(folder, os.W_OK):
        number = errno.EACCES
    elif stats.f_bavail * stats.f_frsize < 1 << 20:
        number = errno.ENOSPC
    else:
        return error
    return OSError(number, os.strerror(number), str(path))


def warn_if_short_of_space(folder: str | os.PathLike, needed_bytes: int, what: str, move: str) -> bool:
    """Log one warning when the disk of ``folder`` (or its nearest existing parent) has less free space
    than ``needed_bytes`` (an estimate of ``what``); ``move`` names the option that writes elsewhere."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return False
    if free >= needed_bytes:
        return False
    log.warning(
        "%s has %.0f MB free; %s need about %.0f MB: free space there, or write elsewhere with %s",
        folder,
        free / 1e6,
        what,
        needed_bytes / 1e6,
        move,
    )
    return True
