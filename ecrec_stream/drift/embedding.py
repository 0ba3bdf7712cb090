"""Embedding drift: a kernel two-sample statistic (MMD) between the reference texts' embeddings
and a window's, vectorised in torch so it runs on a GPU when there is one.

Embeddings come from the caller (the stream worker's cached encoder), so a text is embedded
once for labelling and drift alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ecrec_stream.device import resolve_device
from ecrec_stream.drift.base import WindowedTwoSample


def kernel_mean(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Mean of the Gaussian kernel over all pairs of rows of ``x`` and ``y``."""
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    return torch.exp(-gamma * torch.cdist(x, y).pow(2)).mean()


def mmd2(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float, kxx: torch.Tensor | None = None
) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (the biased V-statistic, which
    is never negative, so a gamma fits its null distribution). ``kxx``: the reference's own
    kernel mean when already known (it does not change between windows, and for a reference
    ten times a window it is most of the work).

    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    >>> mmd2(a, b, 4.0) < mmd2(a, b + 1.0, 4.0)
    True
    """
    if kxx is None:
        kxx = kernel_mean(x, x, bandwidth)
    kyy = kernel_mean(y, y, bandwidth)
    kxy = kernel_mean(x, y, bandwidth)
    return float((kxx + kyy - 2 * kxy).clamp_min(0.0))


class EmbeddingMMD(WindowedTwoSample[np.ndarray]):
    """MMD between embeddings of a window and of the reference; the kernel bandwidth is the
    median pairwise distance within the reference (the median heuristic), fixed at
    calibration. At most ``max_reference`` reference vectors are used (a seeded subsample)."""

    def __init__(self, name: str, *, device: str = "auto", **options: Any) -> None:
        """``options``: those of :class:`WindowedTwoSample`."""
        super().__init__(name, **options)
        self.device = torch.device(resolve_device(device))
        self.bandwidth = float("nan")
        # the last reference sample compared (the live reference, or the calibration's inner
        # half), its tensor and kernel mean: reused while the same list object comes back
        self._reference_memo: tuple[Sequence[np.ndarray], torch.Tensor, torch.Tensor] | None = None

    def _tensor(self, values: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.stack(values), dtype=torch.float32, device=self.device)

    def statistic(self, reference: Sequence[np.ndarray], window: Sequence[np.ndarray]) -> float:
        memo = self._reference_memo
        if memo is None or memo[0] is not reference or len(memo[1]) != len(reference):
            ref = self._tensor(reference)
            memo = (reference, ref, kernel_mean(ref, ref, self.bandwidth))
            self._reference_memo = memo
        return mmd2(memo[1], self._tensor(window), self.bandwidth, kxx=memo[2])

    def _calibrate(self) -> None:
        ref = self._tensor(self.reference)
        distances = torch.cdist(ref, ref)
        off_diagonal = distances[~torch.eye(len(ref), dtype=torch.bool, device=ref.device)]
        self.bandwidth = float(off_diagonal.median()) or 1.0
        self._reference_memo = None
        super()._calibrate()

    def rebase(self) -> None:
        super().rebase()
        self.bandwidth = float("nan")
        self._reference_memo = None

    def _pack(self, values: list[np.ndarray]) -> np.ndarray:
        # one (n, dim) array instead of n small ones; (0, 0) when empty
        return np.stack(values) if values else np.zeros((0, 0), dtype=np.float32)

    def _unpack(self, packed: np.ndarray) -> list[np.ndarray]:
        return list(np.asarray(packed))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bandwidth": self.bandwidth}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.bandwidth = float(state["bandwidth"])
        self._reference_memo = None
