"""One state protocol for every stateful stage, and one way to write it to disk.

A stage's state is a *state document*: JSON values (dicts with string keys, lists, strings,
numbers, booleans, ``None``) and numpy arrays. :func:`save_state` writes it atomically (a
temporary file in the same directory, fsync, rename, fsync of the directory) as a
**safetensors** file: the arrays are its tensors and the JSON skeleton, the stage's kind and its
state version sit in the file's metadata. Nothing is pickled: a pickle runs code when it is
loaded, so a state file from anywhere could take over the process. :func:`load_state` checks the
kind and version before it hands the document back.

safetensors does the binary part (a well-kept format that is safe to load and already a
dependency of the registry); the envelope around it is the few lines below.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from ecrec_stream.exceptions import EcrecError

FORMAT = "ecrec-state"
_TENSOR = "__tensor__"
_PLAIN = frozenset({str, int, float, bool, type(None)})


class StateError(EcrecError):
    """A state file is missing parts, of another kind or version, or not a state file."""


@runtime_checkable
class Stateful(Protocol):
    """A stage whose outputs depend on what it has seen: its state is a state document."""

    def state_dict(self) -> dict[str, Any]:
        """The state as JSON values and numpy arrays (nothing that needs pickle)."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``'s document: the next outputs are the ones the saved
        stage would have given."""
        ...

    def reset_state(self) -> None:
        """Forget everything learnt: as if newly built with the same settings."""
        ...


TakenState = Callable[[], dict[str, Any]]


@runtime_checkable
class TakesState(Stateful, Protocol):
    """A stage whose state is large: :meth:`take_state` is ``state_dict()`` in two steps."""

    def take_state(self) -> TakenState:
        """Copy what the state is built from now (cheap: lists and references to what is
        never changed in place); the returned function builds the document from those copies
        alone, so the stage may go on meanwhile. ``state_dict()`` is ``take_state()()``. A
        caller that holds the stage still while it takes the state (the label checkpoint holds
        both label agents) holds it for the copies only, and builds the document after."""
        ...


def _split(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    """The JSON skeleton of ``value``, each array replaced by a reference into ``tensors``."""
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = np.ascontiguousarray(value)
        return {_TENSOR: name}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StateError(f"state keys must be strings, got {key!r}")
            out[key] = _split(item, tensors)
        return out
    if isinstance(value, list | tuple):
        if all(type(item) in _PLAIN for item in value):
            return list(value)  # the common large case (a column of strings): no call per item
        return [_split(item, tensors) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise StateError(f"{type(value).__name__} is not a state value (JSON values or arrays)")


def _join(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {key: _join(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_join(item, tensors) for item in value]
    return value


def dumps_state(state: dict[str, Any], *, kind: str, version: int) -> bytes:
    """``state`` as the bytes of a state file.

    >>> blob = dumps_state({"n": 2, "w": np.arange(3.0)}, kind="demo", version=1)
    >>> loaded = loads_state(blob, kind="demo", version=1)
    >>> loaded["n"], loaded["w"].tolist()
    (2, [0.0, 1.0, 2.0])
    """
    tensors: dict[str, np.ndarray] = {}
    skeleton = _split(state, tensors)
    metadata = {
        "format": FORMAT,
        "kind": kind,
        "version": str(version),
        # NaN and infinities are state too (an uncalibrated threshold): allowed in the JSON
        "state": json.dumps(skeleton, allow_nan=True, separators=(",", ":")),
    }
    return save_tensors(tensors, metadata=metadata)


def loads_state(blob: bytes, *, kind: str, version: int) -> dict[str, Any]:
    """The state document in ``blob``; raises :class:`StateError` if it is not a state file of
    ``kind`` at ``version``."""
    try:
        tensors = load_tensors(blob)
        header_len = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as exc:  # safetensors raises its own error types
        raise StateError(f"not a state file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise StateError("not an ecrec-stream state file")
    if metadata.get("kind") != kind:
        raise StateError(f"state of {metadata.get('kind')!r}, expected {kind!r}")
    if metadata.get("version") != str(version):
        raise StateError(f"{kind} state version {metadata.get('version')} is not {version}")
    state: dict[str, Any] = _join(json.loads(metadata["state"]), tensors)
    return state


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a
    part: temporary file in the same directory, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_state(path: Path, state: dict[str, Any], *, kind: str, version: int) -> None:
    """Write ``state`` (a state document) to ``path`` atomically."""
    atomic_write(path, dumps_state(state, kind=kind, version=version))


def load_state(path: Path, *, kind: str, version: int) -> dict[str, Any] | None:
    """The state document saved at ``path``, or ``None`` when there is none."""
    if not path.exists():
        return None
    return loads_state(path.read_bytes(), kind=kind, version=version)


def rng_state(rng: Any) -> list[Any]:
    """A ``random.Random``'s state as JSON values (its ``getstate()`` is nested tuples)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: Any, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
