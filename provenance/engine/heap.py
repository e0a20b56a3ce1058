"""Give the memory a step freed back to the operating system (EngineConfig.release_memory; off by default).

glibc's malloc keeps freed chunks below its mmap threshold (which it raises up to 32 MB) resident in the
process heap for reuse. The engine's transient memory under that threshold (kept inputs and output
gradients, linearization temporaries; per-row blocks kept from backward were too until session 9, now one
mapping per call) then stays resident into the next step's forward pass, under its activations, and over
many steps the heap fragments and grows (docs/engine.md). Calling ``malloc_trim`` before each forward pass
returns it; the price is that the next step faults that memory in again. Measured at the benchmark size
(bench/engine.py, peak RSS as a multiple of plain training's): second order 1.34 -> 1.26, 16 targets
1.34 -> 1.15; the time cost, measured in absolute step times of alternating runs, was +8% (first and
second order) to +12% (16 targets) per step (docs/engine.md), so it is off by default. Elsewhere than
glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return freed heap memory to the OS; True if the allocator supports it (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
