"""Parameter-tree utilities: unboxing, flattening, and converting scanned <-> unscanned stacks."""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import numpy as np

# Names of scanned layer stacks: big_vision's ViT and the T5X-style encoder/decoder.
STACK_NAMES = ("encoderblock", "layers")
_UNSCANNED = re.compile(rf"^({'|'.join(STACK_NAMES)})_(\d+)$")

Params = dict[str, Any]


def unbox(tree: Any) -> Any:
    """Drops flax's LogicallyPartitioned boxes, keeping plain arrays."""
    return flax.linen.unbox(tree)


def flatten(params: Params, sep: str = "/") -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(unbox(params), sep=sep)


def unflatten(flat: dict[str, Any], sep: str = "/") -> Params:
    return flax.traverse_util.unflatten_dict(flat, sep=sep)


def count(params: Params) -> int:
    """Number of scalars; works on arrays and on jax.ShapeDtypeStruct trees."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(unbox(params))))


def unscan(params: Params) -> Params:
    """Splits each scanned stack `name` (leading layer axis) into `name_0`, `name_1`, ..."""
    out = {}
    for key, value in params.items():
        if key in STACK_NAMES and isinstance(value, dict):
            depth = jax.tree.leaves(value)[0].shape[0]
            for i in range(depth):
                out[f"{key}_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
        elif isinstance(value, dict):
            out[key] = unscan(value)
        else:
            out[key] = value
    return out


def scan(params: Params) -> Params:
    """Inverse of `unscan`: stacks `name_0..name_{n-1}` into `name` with a leading layer axis."""
    out: Params = {}
    groups: dict[str, dict[int, Any]] = {}
    for key, value in params.items():
        match = _UNSCANNED.match(key)
        if match and isinstance(value, dict):
            groups.setdefault(match.group(1), {})[int(match.group(2))] = value
        elif isinstance(value, dict):
            out[key] = scan(value)
        else:
            out[key] = value
    for name, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"Layer stack {name!r} has non-contiguous indices {sorted(layers)}.")
        out[name] = jax.tree.map(lambda *xs: np.stack(xs), *[layers[i] for i in sorted(layers)])
    return out
