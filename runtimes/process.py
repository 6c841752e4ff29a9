"""Tuning of a ``flows run`` process: glibc's malloc arenas and the garbage collector.

Both act on the whole process, so only the command line calls them, once, at startup.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform

#: mallopt's parameter number for the arena cap (glibc's malloc.h)
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int) -> bool:
    """Caps glibc's malloc arenas at ``arenas``; True when the cap took effect.

    glibc gives threads that allocate at once arenas of their own, and an arena keeps what was
    freed in it. librdkafka's threads fill theirs with fetched records and queued messages,
    so a worker's peak RSS grows by arenas it rarely reuses: on the wordcount benchmark one
    arena measured 13 MB less peak RSS. Only arenas created after the call are capped, so it
    runs before any client starts a thread. ``MALLOC_ARENA_MAX`` in the environment (glibc's
    own switch) wins; 0 keeps glibc's default; other C libraries are left alone.
    """
    if arenas <= 0 or "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def tune_gc(threshold: int) -> bool:
    """Makes the cyclic garbage collector run less often; True when it changed anything.

    A worker allocates a few objects per record (the record, its decoded form, its output),
    keeps a batch of them alive, and lets them go together; none of them form cycles. With
    Python's default first threshold (700 allocations) the collector runs many times per
    batch, promotes the live batch to the older generations, and then walks every object of
    the process, the imported libraries included, in full collections: on the wordcount
    benchmark that was about a fifth of the process's CPU. A first threshold of
    ``threshold`` allocations lets most batches die young, and :func:`gc.freeze` moves what
    exists at startup (modules, the app, the clients) out of the collector's sight for good.
    Cycles are still collected, just later. 0 keeps Python's defaults.
    """
    if threshold <= 0:
        return False
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)
    return True


__all__ = ["limit_malloc_arenas", "tune_gc"]
