"""Training on a CPU: keep freed memory in the process for the next step (docs/performance.md, "bf16 on a CPU").

Every training step of the ConvNet allocates and frees activations of 100-300 MB (batch 64 of 128 x 130).
glibc's malloc serves blocks that large with mmap and returns them to the system when freed, so every
step maps them again and the kernel zeroes every page: about a third of a CPU step, measured. Raising
the mmap and trim thresholds keeps the freed blocks in the heap for the next step instead; the cost is
that the process holds on to its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the heap is given back only when this much is free at its top


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse; False (and nothing changed) without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if done:
        log.info("malloc keeps freed memory for reuse (keep_freed_memory=true)")
    return done
