"""Which torch device a setting means: ``auto`` is CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` or ``"cpu"``; any other value is returned as it is.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
