"""Which torch device a setting means (``auto`` is CUDA when torch sees a GPU, else the CPU),
and which precision the encoder runs in there."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import sys
import threading
from pathlib import Path


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` or ``"cpu"``; any other value is returned as it is.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bfloat16 in AMX tiles (from Linux's CPU flags): the one CPU
    where bf16 autocast beat float32 here (bench.precision: reviews 3.40 vs 9.35 ms each). With
    AVX512-BF16 alone it lost: on a Xeon without AMX, titles / queries / reviews took 2.92 /
    1.37 / 14.36 ms each under bf16 against 1.87 / 0.79 / 8.11 in float32 (autocast converts
    the weights on every call, and those instructions only speed up the dot products)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\bamx_bf16\b", flags) is not None


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` -> ``"bfloat16"`` on CUDA and on CPUs with AMX, else ``"float32"``;
    any other value is returned as it is.

    >>> resolve_precision("float32", "cuda")
    'float32'
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda") or (device == "cpu" and cpu_has_amx()):
        return "bfloat16"
    return "float32"


def inference_threads(setting: int | None) -> int:
    """Torch threads for a process whose event loop shares the CPU with inference: the setting,
    or one fewer than the CPUs this process may use (at least one). Two torch threads next to a
    busy event loop on two cores spend their time waiting for each other: 32 product names
    took 11.3 ms each that way against 2.8 ms with one thread (0.96 and 1.21 ms alone)."""
    if setting is not None:
        return setting
    return max(1, len(os.sched_getaffinity(0)) - 1)


def pass_threads(setting: int | None, device: str) -> int:
    """Threads that run one encode call's forward passes at once: the setting, 1 on CUDA (one
    device runs them in turn), else the CPUs this process may use over torch's threads.

    >>> pass_threads(3, "cpu"), pass_threads(None, "cuda")
    (3, 1)
    """
    if setting is not None:
        return setting
    if device != "cpu":
        return 1
    import torch

    return max(1, len(os.sched_getaffinity(0)) // torch.get_num_threads())


PR_SET_NAME = 15  # linux/prctl.h


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread ``name`` (by default its Python name) at the OS level too, so
    ``top -H``, ``/proc/<pid>/task/*/comm`` and bench/throughput.py's CPU per thread name the
    stage; Linux keeps the first 15 bytes. A no-op on other systems, or if it fails.

    Written here because Python 3.11's ``threading`` names threads for Python only (3.14 does
    this itself); an executor calls it as its ``initializer``.
    """
    if sys.platform != "linux":
        return
    raw = (name or threading.current_thread().name).encode()[:15]
    with contextlib.suppress(OSError, AttributeError):  # no libc prctl: Python's name only
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
