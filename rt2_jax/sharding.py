"""Mesh from the config and logical-axis rules -> NamedSharding.

Parameters carry logical axis names (embed, heads, kv_heads, kv, mlp, vocab, layers) and
activations their own (act_batch, act_length, act_embed, act_heads, act_kv, act_mlp, act_vocab),
MaxText-style;
`config.sharding_rules` maps each to mesh axes of the ('data', 'fsdp', 'model') mesh. The
defaults give FSDP for weights (`embed -> fsdp`) and data parallelism over data x fsdp for
activations (`act_batch -> (data, fsdp)`, `act_embed` replicated). A config's own rules that
leave out the activation names get the default activation rules for them (so an old rule set
that named only weight axes keeps sharding its batches).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")

# Weights: FSDP over `fsdp` on the embedding axis, tensor parallelism over `model`. The
# decoder-only backbone's key/value heads (`kv_heads`, often just one) stay replicated.
PARAM_RULES = (
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", None),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", "model"),
    ("layers", None),
)
# Activations (and host batches): batch over data x fsdp, the feature axes tensor-parallel like
# the weights they come from, the model width replicated.
ACTIVATION_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "model"),
    ("act_kv", None),
    ("act_mlp", "model"),
    ("act_vocab", "model"),
)
DEFAULT_RULES = PARAM_RULES + ACTIVATION_RULES


def rules_from_config(config) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """`config.sharding_rules` as a tuple of (logical, mesh axes) pairs (default: DEFAULT_RULES)."""
    raw = config.get("sharding_rules", None)
    if not raw:
        return DEFAULT_RULES
    rules = []
    for item in raw:
        logical, mesh_axes = item
        if isinstance(mesh_axes, (list, tuple)):
            mesh_axes = tuple(mesh_axes)
            unknown = set(mesh_axes) - set(MESH_AXES)
        else:
            unknown = {mesh_axes} - set(MESH_AXES) - {None}
        if unknown:
            raise ValueError(f"sharding rule {item!r} names mesh axes {sorted(unknown)}; the mesh "
                             f"axes are {MESH_AXES}.")
        rules.append((logical, mesh_axes))
    named = {logical for logical, _ in rules}
    rules += [rule for rule in ACTIVATION_RULES if rule[0] not in named]
    return tuple(rules)


def mesh_shape(config, num_devices: int) -> tuple[int, int, int]:
    """Resolves `config.mesh` ({data, fsdp, model}; one may be -1 = the rest) for num_devices."""
    cfg = config.mesh
    dims = [int(cfg[a]) for a in MESH_AXES]
    spec = ", ".join(f"{a}={d}" for a, d in zip(MESH_AXES, dims, strict=True))
    if dims.count(-1) > 1:
        raise ValueError(f"config.mesh ({spec}): at most one axis may be -1.")
    if any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"config.mesh ({spec}): sizes must be positive or -1.")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if num_devices % known:
            raise ValueError(f"config.mesh ({spec}) does not divide the {num_devices} devices: "
                             f"the fixed axes multiply to {known}. Choose sizes whose product "
                             f"divides {num_devices}.")
        dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) != num_devices:
        raise ValueError(f"config.mesh ({spec}) has {math.prod(dims)} devices but "
                         f"{num_devices} are available; set one axis to -1 or make the product "
                         f"equal {num_devices}.")
    return tuple(dims)


def make_mesh(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, AssertionError, NotImplementedError):
        # Topology-aware placement is not available for every device kind (e.g. CPU, or a
        # subset of a slice); fall back to the given order.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_sharding(boxed_tree, mesh: Mesh, rules) -> object:
    """NamedSharding tree for a tree of flax LogicallyPartitioned boxes (abstract or not).
    Leaves without names are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Sharding of a host-batch array: leading axis by the `act_batch` rule, the rest
    replicated."""
    spec = nn.logical_to_mesh_axes(("act_batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def data_parallel_size(mesh: Mesh, rules) -> int:
    """How many ways the batch dimension is split (the global batch must be divisible by it)."""
    spec = nn.logical_to_mesh_axes(("act_batch",), rules)
    axes = spec[0]
    if axes is None:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules):
    """Enter while tracing a jitted function so that the model's logical activation constraints
    (`nn.with_logical_constraint`) become real sharding constraints on `mesh`."""
    with mesh, nn.logical_axis_rules(rules):
        yield


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
