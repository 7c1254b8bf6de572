"""Pickle-free serialisation of nested state (dicts, lists, tuples, tensors, numpy arrays, primitives).

`flatten_state(obj)` -> (json-able tree, {key: tensor}); tensors become {"__tensor__": key} in the tree, so
the tree goes to JSON and the tensors to safetensors. `unflatten_state` inverts it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch


def flatten_state(obj: Any, prefix: str = "t") -> tuple[Any, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            key = f"{path}#{len(tensors)}"  # the counter keeps keys unique whatever the dict keys contain
            tensors[key] = o.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if type(o).__module__ == "numpy" and type(o).__name__ == "ndarray":
            key = f"{path}#{len(tensors)}"
            tensors[key] = torch.from_numpy(o.copy()).contiguous()
            return {"__ndarray__": key}
        if isinstance(o, dict):
            if all(isinstance(k, str) for k in o):
                return {"__map__": {k: walk(v, f"{path}.{k}") for k, v in o.items()}}
            return {
                "__items__": [
                    [walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(o.items())
                ]
            }
        if isinstance(o, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if isinstance(o, torch.dtype):
            return {"__dtype__": str(o).removeprefix("torch.")}
        if hasattr(o, "item") and callable(o.item):  # numpy scalar
            return o.item()
        raise TypeError(f"cannot serialise {type(o).__name__} at {path} without pickle")

    return walk(obj, prefix), tensors


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(o: Any) -> Any:
        if isinstance(o, list):
            return [walk(v) for v in o]
        if not isinstance(o, dict):
            return o
        if "__tensor__" in o:
            return tensors[o["__tensor__"]]
        if "__ndarray__" in o:
            return tensors[o["__ndarray__"]].numpy()
        if "__map__" in o:
            return {k: walk(v) for k, v in o["__map__"].items()}
        if "__items__" in o:
            return {walk(k): walk(v) for k, v in o["__items__"]}
        if "__tuple__" in o:
            return tuple(walk(v) for v in o["__tuple__"])
        if "__dtype__" in o:
            return getattr(torch, o["__dtype__"])
        raise ValueError(f"unknown serialised node {sorted(o)}")

    return walk(tree)


def write_bytes_durably(path: str, data: bytes) -> None:
    """Write and fsync a file."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file, fsynced."""
    from safetensors.torch import save

    write_bytes_durably(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def save_json(path: str, obj: Any) -> None:
    write_bytes_durably(path, json.dumps(obj, indent=1).encode())


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
