"""Keeping freed memory in a training process, so that large CPU tensors do not page-fault every step."""
import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


@functools.cache
def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse: no private mmap per large block, no trimming.

    By default glibc maps every block above 32 MiB afresh and unmaps it on free, so each training
    step on the CPU faults in its activations page by page again (about half of a seed-model step
    at 36×64, batch 128; benchmarks/README.md §2). The process's resident memory then stays at its
    peak. Idempotent; returns whether it applied (False where the C library is not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    if applied:
        logger.debug("malloc keeps freed memory (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)")
    return applied
