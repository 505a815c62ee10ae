"""The C allocator's settings that feedback's many passes need on the CPU (issue #22).

FSP runs the model forward and backward once per update. Between passes, and between calls,
every activation is freed. With glibc's default settings the allocator hands a large free top
of its heap back to the system (``M_TRIM_THRESHOLD``) and gives each tensor above 32 MiB its
own mapping, unmapped when it is freed (``M_MMAP_THRESHOLD``): the next pass faults every such
page in again, one to five microseconds a 4 KiB page on this project's 2-core machine.
EfficientNet-Lite0's paper preset (a batch of 4 photos at 320 px) took 600,000-785,000 minor
faults a call and 8.5-9.2 x Saliency's time, where Saliency, run where an earlier call had grown
the heap, took none; with the allocator keeping freed memory, 12 faults and 6.3-6.5 x, Saliency's
time unchanged.

:func:`keep_freed_memory` (``captum_feedback.keep_freed_memory``) sets that for the whole
process, as ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` in the environment, or
jemalloc and tcmalloc loaded through ``LD_PRELOAD``, would. The library never calls it by itself
(it changes the user's process); the ``captum-feedback`` command and the demo do, and
``benchmarks/speed.py --keep-freed-memory`` measures with it.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any, Optional

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
KEPT_BYTES = 1 << 30
"""Freed memory the allocator keeps (1 GiB), and the size below which tensors come from its heap."""


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[Any]:
    """The process's C library when it is glibc (which has ``mallopt``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has no mallopt parameters)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Makes the process's C allocator keep up to :data:`KEPT_BYTES` of freed memory instead of
    handing it back to the system, and serve tensors below that size from its heap.

    Feedback's passes then reuse the pages of the pass before (see the module's docstring for
    the numbers). The process keeps its peak memory from then on, up to 1 GiB more than it
    uses. It lasts for the process; call it once, before long CPU runs.

    Returns:
        Whether it took effect: only with glibc (Linux); elsewhere nothing changes.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BYTES))
