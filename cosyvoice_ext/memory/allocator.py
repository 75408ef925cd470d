"""``release_cpu_memory``: make glibc's malloc give freed tensor memory back to the OS.

Why: on CPU, PyTorch allocates tensors with ``malloc``. glibc serves anything up to its (dynamic,
up to 32 MiB) mmap threshold from its heap and keeps freed heap memory; with gradient
checkpointing a training step frees each block's temporaries right away, and the heap keeps them
anyway. Measured on the CosyVoice3 DiT flow with LoRA and checkpointing at 2000 frames
(BENCHMARKS.md, run F): 5.70 GiB RSS at the peak with the default allocator, 2.92 GiB with this
lever, same step, same loss: the difference was freed memory glibc held. A fixed mmap threshold of 128 KiB (``mallopt(M_MMAP_THRESHOLD)``, the same
as ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment) returns freed blocks to the OS at once,
so RSS follows the live tensors, as GPU memory does under CUDA's caching allocator.

Cost: every large allocation is a fresh ``mmap`` (page faults, zeroing), so CPU steps are slower
(BENCHMARKS.md). It changes nothing on the GPU, and nothing about the model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("cosyvoice_ext.memory")

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def release_cpu_memory(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold for this process (fixed: no dynamic growth); False where there is no
    glibc ``mallopt`` (macOS, musl), which is logged, not an error: the lever only lowers CPU RSS."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.warning("cosyext memory: release_cpu_memory needs glibc's mallopt (not found in %s); not used", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, int(threshold)) != 1:
        log.warning("cosyext memory: mallopt(M_MMAP_THRESHOLD, %d) failed; release_cpu_memory not used", threshold)
        return False
    return True
