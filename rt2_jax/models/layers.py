"""Building blocks shared by the image tower and the encoder-decoder.

Every parameter is created through `param_with_axes` (or an initializer wrapped by
`nn.with_logical_partitioning`) so that it carries logical axis names from
{vocab, embed, heads, kv, mlp, layers}; `rt2_jax.sharding` maps those names onto the mesh.
Activations are annotated with `constrain` (a no-op outside a mesh).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array

# Logical axis names of parameters.
EMBED, HEADS, KV = "embed", "heads", "kv"
MLP, VOCAB, LAYERS = "mlp", "vocab", "layers"
# Logical axis names of activations: their own names with their own rules
# (rt2_jax.sharding.DEFAULT_RULES), so a weight axis and an activation axis of the same size can
# be sharded differently without relying on a rule being skipped.
BATCH, LENGTH = "act_batch", "act_length"
ACT_EMBED = (BATCH, LENGTH, "act_embed")
ACT_HEADS = (BATCH, LENGTH, "act_heads", "act_kv")
ACT_MLP = (BATCH, LENGTH, "act_mlp")
ACT_LOGITS = (BATCH, LENGTH, "act_vocab")

DEFAULT_KERNEL_INIT = nn.initializers.lecun_normal()
NEG_INF = -1e10  # additive mask value; finite so fully masked rows stay NaN-free


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """Annotates an activation with logical axis names (a no-op without mesh rules)."""
    return nn.with_logical_constraint(x, tuple(axes))


def logical_init(init: Callable, axes: Sequence[str | None]) -> Callable:
    return nn.with_logical_partitioning(init, tuple(axes))


def dtype_from_name(name: str | Dtype) -> Dtype:
    """'float32' / 'bfloat16' / 'float16' (any floating dtype numpy knows) -> that dtype."""
    if not isinstance(name, str):
        return name
    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"Unknown floating dtype {name!r}; use float32, bfloat16 or float16.")
    return dtype


class RMSNorm(nn.Module):
    """T5-style root-mean-square layer norm (no mean subtraction, no bias).

    Kept instead of flax's `nn.RMSNorm` (and `LayerNorm` below instead of `nn.LayerNorm`): flax
    multiplies x by (rsqrt(var) * scale) where T5X computes (x * rsqrt(var)) * scale. With both
    swapped, a 200-step tiny run's loss moved by up to 0.011 (identical at step 10; the same run
    with these norms is bit-identical from run to run), so the swap would change results.

    `zero_centered` is Gemma's variant: the scale starts at 0 and multiplies as (1 + scale)."""

    epsilon: float = 1e-6
    zero_centered: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.epsilon)
        init = nn.initializers.zeros if self.zero_centered else nn.initializers.ones
        scale = self.param(
            "scale", logical_init(init, (EMBED,)), (x.shape[-1],), self.param_dtype
        )
        if self.zero_centered:
            return (y * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm whose `scale`/`bias` sit directly under the module, as in big_vision."""

    use_bias: bool = True
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        features = x.shape[-1]
        scale = self.param(
            "scale", logical_init(nn.initializers.ones, (EMBED,)), (features,), self.param_dtype
        )
        y = y * scale.astype(jnp.float32)
        if self.use_bias:
            bias = self.param(
                "bias", logical_init(nn.initializers.zeros, (EMBED,)), (features,),
                self.param_dtype,
            )
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def dense_general(
    features: int | tuple[int, ...],
    *,
    axis: int | tuple[int, ...] = -1,
    kernel_axes: tuple[str | None, ...],
    bias_axes: tuple[str | None, ...] | None,
    kernel_init: Callable = DEFAULT_KERNEL_INIT,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
) -> nn.DenseGeneral:
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=bias_axes is not None,
        kernel_init=logical_init(kernel_init, kernel_axes),
        bias_init=logical_init(nn.initializers.zeros, bias_axes or ()),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def dot_product_attention(
    query: Array, key: Array, value: Array, bias: Array | None, dropout_rng, dropout_rate: float,
    deterministic: bool, dtype: Dtype,
) -> Array:
    """query [B,Q,H,D], key/value [B,K,H,D], bias broadcastable to [B,H,Q,K]. Softmax in f32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1)
    if not deterministic and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = weights * keep / (1.0 - dropout_rate)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), value)


class Attention(nn.Module):
    """Multi-head attention with `query/key/value/out` projections (big_vision / T5X names).

    `scale_query=False` follows T5: the 1/sqrt(head_dim) factor is folded into the query
    initializer instead of being applied at run time, which keeps T5/UL2 weights importable.
    The key/value projection and the attention itself are separate methods so that a decoder
    can project keys/values once (cross-attention) or append them to a cache (self-attention).
    """

    num_heads: int
    head_dim: int
    out_features: int
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: bool = False
    scale_query: bool = True
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        q_init = nn.initializers.lecun_normal()
        if not self.scale_query:
            q_init = nn.initializers.variance_scaling(1.0 / self.head_dim, "fan_in", "normal")
        proj = functools.partial(
            dense_general, features=(self.num_heads, self.head_dim),
            kernel_axes=(EMBED, HEADS, KV), bias_axes=(HEADS, KV) if self.qkv_bias else None,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        self.query = proj(name="query", kernel_init=q_init)
        self.key = proj(name="key")
        self.value = proj(name="value")
        self.out = dense_general(
            features=self.out_features, axis=(-2, -1), kernel_axes=(HEADS, KV, EMBED),
            bias_axes=(EMBED,) if self.out_bias else None, dtype=self.dtype,
            param_dtype=self.param_dtype, name="out",
        )
        if self.qk_norm:
            self.query_norm = LayerNorm(use_bias=False, dtype=self.dtype,
                                        param_dtype=self.param_dtype)
            self.key_norm = LayerNorm(use_bias=False, dtype=self.dtype,
                                      param_dtype=self.param_dtype)

    def project_kv(self, inputs_kv: Array) -> tuple[Array, Array]:
        key = constrain(self.key(inputs_kv), ACT_HEADS)
        value = constrain(self.value(inputs_kv), ACT_HEADS)
        if self.qk_norm:
            key = self.key_norm(key)
        return key, value

    def project_query(self, inputs_q: Array) -> Array:
        query = constrain(self.query(inputs_q), ACT_HEADS)
        if self.qk_norm:
            query = self.query_norm(query)
        if self.scale_query:
            query = query * jnp.asarray(self.head_dim**-0.5, query.dtype)
        return query

    def attend(self, query: Array, key: Array, value: Array, bias: Array | None,
               deterministic: bool) -> Array:
        rng = None
        if not deterministic and self.dropout_rate > 0.0:
            rng = self.make_rng("dropout")
        ctx = dot_product_attention(query, key, value, bias, rng, self.dropout_rate,
                                    deterministic, self.dtype)
        return constrain(self.out(constrain(ctx, ACT_HEADS)), ACT_EMBED)

    def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None = None,
                 deterministic: bool = True) -> Array:
        key, value = self.project_kv(inputs_kv)
        return self.attend(self.project_query(inputs_q), key, value, bias, deterministic)


class GatedMlp(nn.Module):
    """T5.1.1 / UL2 gated MLP: act(x W0) * (x W1) -> W_out, names wi_0, wi_1, wo."""

    d_ff: int
    activation: str = "gelu"
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        act = activation_fn(self.activation)
        dense = functools.partial(dense_general, bias_axes=None, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        gate = act(dense(self.d_ff, kernel_axes=(EMBED, MLP), name="wi_0")(x))
        linear = dense(self.d_ff, kernel_axes=(EMBED, MLP), name="wi_1")(x)
        h = constrain(gate * linear, ACT_MLP)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(x.shape[-1], kernel_axes=(MLP, EMBED), name="wo")(h)


def activation_fn(name: str) -> Callable[[Array], Array]:
    table = {
        # T5.1.1 / mT5 use the tanh approximation ("gelu_new"); UL2 uses SiLU.
        "gelu": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
        "silu": jax.nn.silu,
        "relu": jax.nn.relu,
    }
    if name not in table:
        raise ValueError(f"Unknown MLP activation {name!r}; use one of {sorted(table)}.")
    return table[name]


def relative_position_bucket(relative_position: np.ndarray | Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
    """T5's bucketing of (key position - query position) into `num_buckets` buckets.

    Exact buckets for small distances, logarithmic ones up to `max_distance`, and one bucket for
    everything further. A bidirectional bias spends half of the buckets on each direction.
    """
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        / np.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias, one scalar per (bucket, head), shared by all layers of a stack."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q_len: int, k_len: int, q_offset: Array | int = 0) -> Array:
        """Returns the bias [1, H, q_len, k_len] for queries at q_offset + arange(q_len)."""
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        k_pos = jnp.arange(k_len)[None, :]
        buckets = relative_position_bucket(
            k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance
        )
        table = self.param(
            "rel_embedding",
            logical_init(nn.initializers.normal(1.0), (HEADS, None)),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        bias = jnp.take(table.astype(jnp.float32), buckets, axis=1)  # [H, q, k]
        return bias[None].astype(self.dtype)


def padding_bias(q_mask: Array | None, k_mask: Array, dtype: Dtype = jnp.float32) -> Array:
    """Additive bias [B,1,Q,K] that blocks attention to padded keys (and from padded queries)."""
    allowed = k_mask[:, None, None, :]
    if q_mask is not None:
        allowed = jnp.logical_and(allowed, q_mask[:, None, :, None])
    return jnp.where(allowed, 0.0, NEG_INF).astype(dtype)


def causal_bias(length: int, dtype: Dtype = jnp.float32) -> Array:
    """Additive bias [1,1,L,L] that blocks attention to later positions."""
    allowed = jnp.tril(jnp.ones((length, length), dtype=bool))
    return jnp.where(allowed, 0.0, NEG_INF).astype(dtype)[None, None]


# jax.checkpoint_policies members that are policies themselves (the rest are factories that
# take names or other policies).
_REMAT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable",
                   "dots_with_no_batch_dims_saveable", "checkpoint_dots",
                   "checkpoint_dots_with_no_batch_dims")


def remat_policy(name: str):
    """'full' (None: save nothing, recompute all) or the name of a jax.checkpoint_policies
    policy, e.g. 'dots_with_no_batch_dims_saveable'."""
    if name == "full":
        return None
    if name not in _REMAT_POLICIES or not hasattr(jax.checkpoint_policies, name):
        raise ValueError(f"Unknown remat policy {name!r}; use 'none', 'full' or one of "
                         f"{list(_REMAT_POLICIES)} (jax.checkpoint_policies).")
    return getattr(jax.checkpoint_policies, name)


def stack_layers(
    layer_cls: type[nn.Module],
    *,
    num_layers: int,
    scan: bool,
    remat: str,
    in_axes: tuple,
    name: str,
    **layer_kwargs,
):
    """Builds a stack of identical layers as one scanned module or as a Python list.

    Scanned: one module `name` whose parameters have a leading `layers` axis (big_vision's
    `Transformer/encoderblock`). Unscanned: modules `{name}_{i}`. The layer's __call__ must take the
    carry first and return (carry, per_layer_output).
    `in_axes` gives, for each argument after the carry, `nn.broadcast` or the scanned axis (0).
    """
    cls = layer_cls
    if remat != "none":
        # Static (non-array) arguments are broadcast in the scan; remat must not trace them.
        cls = nn.remat(cls, policy=remat_policy(remat), prevent_cse=not scan)
    if scan:
        scanned = nn.scan(
            cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return scanned(name=name, **layer_kwargs)
    return [cls(name=f"{name}_{i}", **layer_kwargs) for i in range(num_layers)]


def apply_stack(stack, in_axes: tuple, carry, *args):
    """Runs a stack built by `stack_layers` with the same `in_axes`.

    Returns (carry, per-layer outputs stacked on a leading axis, or None).
    """
    if not isinstance(stack, list | tuple):   # a list assigned in `setup` becomes a tuple
        return stack(carry, *args)
    outputs = []
    for i, layer in enumerate(stack):
        layer_args = [
            arg if axis is nn.broadcast else jax.tree.map(lambda a, i=i: a[i], arg)
            for arg, axis in zip(args, in_axes, strict=True)
        ]
        carry, out = layer(carry, *layer_args)
        outputs.append(out)
    if outputs[0] is None:
        return carry, None
    return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)
