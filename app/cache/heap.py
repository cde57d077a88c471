"""Let the in-process cache reuse the memory it frees (glibc's malloc; elsewhere a no-op).

A cache fill allocates one object per instance. glibc returns large freed blocks to the kernel
at once (mmap'd blocks) or as soon as the top of the heap has more than a few hundred KiB free,
so after an eviction or a cache clear every byte of the next fill is a fresh page: one page
fault and a kernel zeroing per 4 KiB (22,000 faults per 158 MB study, about 50 ms of CPU).
Keeping freed memory up to the cache's own size makes a refill reuse it."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory kept at the top of the heap before trimming
_M_MMAP_THRESHOLD = -3  # <malloc.h>: blocks at least this large get their own mapping
MMAP_THRESHOLD = 32 * 1024 * 1024  # only huge objects (e.g. long multi-frames) mapped apart
_INT_MAX = 2**31 - 1


def keep_freed_memory(up_to: int) -> bool:
    """Ask malloc to keep up to ``up_to`` freed bytes for reuse; False where it cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt here: freed cache memory goes back to the system")
        return False
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_set = mallopt(_M_TRIM_THRESHOLD, max(0, min(up_to, _INT_MAX))) == 1
    return mmap_set and trim_set
