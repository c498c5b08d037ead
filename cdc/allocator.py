"""Keep freed memory in the process, so that large CPU tensors cost no page faults.

glibc's ``malloc`` serves every request above its mmap threshold (adaptive, at most 32 MiB) with a
fresh ``mmap``, and unmaps it again at ``free``. PyTorch allocates CPU tensors with ``malloc``.
A codec at full resolution allocates many tensors of that size every step: a 768x512 activation
of 48 channels is 38 MB in bf16. Each one costs the kernel thousands of page faults (it zeroes
every 4 KiB page) before the operator computes anything. On a 2-core VM a 1x1 convolution into
such a tensor took 11 ms instead of 1 ms, and one fp32 DDIM step of ``small-base`` took 285 ms
instead of 204 ms (``benchmarks/decode.py``).

The usual cure is jemalloc or tcmalloc through ``LD_PRELOAD``. Here glibc is told to do what a
caching allocator does instead: serve large blocks from its heap (``M_MMAP_MAX = 0``) and keep up
to ``KEEP_BYTES`` of freed memory for reuse (``M_TRIM_THRESHOLD``). The process's resident
memory then stays near its peak instead of falling back after each step.

The ``cdc`` command and ``cdc/train.py`` call ``keep_freed_memory`` at start
(``CDC_MALLOC=system`` keeps glibc's defaults). A library should not change a process-wide setting
behind its user's back, so Python users of the API call it themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30  # freed memory above this at the heap's top goes back to the kernel


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns whether it did:
    ``False`` without glibc (macOS, Windows, musl) or with ``CDC_MALLOC=system``."""
    if os.environ.get("CDC_MALLOC", "").lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
