"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden name beside ``path``, unique to this process (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


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
