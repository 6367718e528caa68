"""Decoder-only prefix LM (PaLM-E / PaliGemma shape) with an incremental-decoding API.

The sequence is [prefix, target]: the prefix (image tokens + prompt, built by `VLM`) attends
to itself in full (bidirectionally); the target (decoder start token + answer) attends to the
whole prefix and causally to itself. Padded prefix positions are never attended to and take no
position: RoPE positions count real tokens only (cumsum of the mask - 1), so the amount of
prompt padding does not change the output.

Blocks are Gemma's: pre-norm RMSNorm with (1 + scale), grouped-query attention (`num_kv_heads`
key/value heads shared by `num_heads` query heads; 1 = multi-query) with rotary position
embeddings on queries and keys and queries scaled by 1/sqrt(head_dim), a gated MLP
(GeGLU with `mlp_activation="gelu"`, SwiGLU with "silu"), input embeddings multiplied by
sqrt(width) and logits tied to the input embedding. Parameter names and shapes are big_vision's
Gemma (`big_vision/models/ppp/gemma.py`), so a PaliGemma checkpoint's `llm/...` maps over as is:

  embedder/input_embedding                    [vocab, width]
  layers/pre_attention_norm/scale             [width]            (stacked on a leading depth axis)
  layers/attn/q_einsum/w                      [heads, width, head_dim]
  layers/attn/kv_einsum/w                     [2, kv_heads, width, head_dim]
  layers/attn/attn_vec_einsum/w               [heads, head_dim, width]
  layers/pre_ffw_norm/scale                   [width]
  layers/mlp/gating_einsum                    [2, width, mlp_dim]
  layers/mlp/linear                           [mlp_dim, width]
  final_norm/scale                            [width]

Decoding keeps a `PrefixDecodeState`: a KV cache [layers, B, T, kv_heads, head_dim] over
T = prefix length + decode steps slots, which slots hold real keys, each row's next RoPE
position and the next slot to write. `prefill` runs the prefix and the first target token(s);
`decode_step` runs one more token.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from rt2_jax.models import layers
from rt2_jax.models.layers import EMBED, HEADS, KV, MLP, VOCAB, Dtype

Array = jax.Array

# Logical name of the key/value-head axis: kept apart from `heads` because a multi-query model
# has one key/value head, which cannot be split over a tensor-parallel mesh axis.
KV_HEADS = "kv_heads"
ACT_KV = (layers.BATCH, layers.LENGTH, None, "act_kv")
# The layer stack's arguments after x: positions, bias, cache (per layer), write index.
_IN_AXES = (nn.broadcast, nn.broadcast, 0, nn.broadcast)


@flax.struct.dataclass
class PrefixDecodeState:
    cache_k: Array     # [L, B, T, K, H]
    cache_v: Array
    key_mask: Array    # [B, T] bool: prefix slots that hold a real token; True after the prefix
    position: Array    # [B] int32: the RoPE position of the next token
    index: Array       # int32 scalar: the next slot to write


def prefix_positions(mask: Array) -> Array:
    """RoPE positions [B, L] of a sequence whose real tokens are `mask` [B, L]: real tokens are
    numbered 0, 1, ... in order; a padded slot shares the position of the real token before it
    (it is never attended to)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def prefix_lm_bias(key_mask: Array, query_slots: Array, prefix_len: int) -> Array:
    """Additive bias [B, 1, Q, T]: a query at slot q sees key slot k when the key is real and
    either in the prefix (k < prefix_len) or not after the query (k <= q). A prefix query thus
    sees the whole real prefix and nothing after it; a target query sees the prefix and the
    target up to itself."""
    k = jnp.arange(key_mask.shape[1])[None, :]
    q = query_slots[:, None]
    allowed = (k < prefix_len) | (k <= q)                       # [Q, T]
    allowed = allowed[None] & key_mask[:, None, :]               # [B, Q, T]
    return jnp.where(allowed, 0.0, layers.NEG_INF)[:, None].astype(jnp.float32)


def apply_rope(x: Array, positions: Array, max_wavelength: float) -> Array:
    """Rotary embedding of x [B, L, N, H] at positions [B, L] (Gemma's convention: the first
    and second halves of each head are the two coordinates of each rotated pair)."""
    half = x.shape[-1] // 2
    timescale = max_wavelength ** (2.0 * np.arange(half, dtype=np.float32) / x.shape[-1])
    radians = positions[..., None].astype(jnp.float32) / timescale       # [B, L, half]
    sin, cos = jnp.sin(radians)[:, :, None], jnp.cos(radians)[:, :, None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _init(in_axes: tuple[int, ...], out_axes: tuple[int, ...], batch_axes=()):
    """Fan-in normal initializer of an einsum weight (as big_vision's Gemma)."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axes,
                                            out_axis=out_axes, batch_axis=batch_axes)


class Einsum(nn.Module):
    """One weight `w` of the given shape and logical axes, applied with an einsum."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: object
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, equation: str, x: Array) -> Array:
        w = self.param("w", layers.logical_init(self.init, self.axes), self.shape,
                       self.param_dtype)
        return jnp.einsum(equation, x.astype(self.dtype), w.astype(self.dtype))


class Embedder(nn.Module):
    """`input_embedding` [vocab, width]: token embeddings scaled by sqrt(width), and the tied
    output logits (optionally only for the vocabulary ids `output_ids` [K])."""

    vocab_size: int
    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0)
        self.input_embedding = self.param(
            "input_embedding", layers.logical_init(init, (VOCAB, EMBED)),
            (self.vocab_size, self.width), self.param_dtype)

    def encode(self, tokens: Array) -> Array:
        x = jnp.take(self.input_embedding, tokens, axis=0).astype(self.dtype)
        return x * jnp.asarray(np.sqrt(self.width), self.dtype)

    def decode(self, x: Array, output_ids: Array | None = None) -> Array:
        table = self.input_embedding
        if output_ids is not None:
            table = jnp.take(table, output_ids, axis=0)
        logits = jnp.einsum("...d,vd->...v", x.astype(self.dtype), table.astype(self.dtype))
        return logits.astype(jnp.float32)


class GatedMlp(nn.Module):
    """act(x W_gate) * (x W_up) W_down with Gemma's names: `gating_einsum` [2, width, mlp_dim]
    holds W_gate and W_up, `linear` [mlp_dim, width] is W_down."""

    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        gating = self.param(
            "gating_einsum", layers.logical_init(_init((1,), (2,), (0,)), (None, EMBED, MLP)),
            (2, width, self.mlp_dim), self.param_dtype).astype(self.dtype)
        linear = self.param(
            "linear", layers.logical_init(_init((0,), (1,)), (MLP, EMBED)),
            (self.mlp_dim, width), self.param_dtype).astype(self.dtype)
        x = x.astype(self.dtype)
        gate = layers.activation_fn(self.activation)(jnp.dot(x, gating[0]))
        h = layers.constrain(gate * jnp.dot(x, gating[1]), layers.ACT_MLP)
        return jnp.dot(h, linear)


class GroupedQueryAttention(nn.Module):
    """Self-attention with `num_kv_heads` key/value heads (Gemma's q_einsum / kv_einsum /
    attn_vec_einsum), RoPE, and an optional KV cache."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_max_wavelength: float = 10_000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, bias, cache, index):
        width = x.shape[-1]
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = Einsum((n, width, h), (HEADS, EMBED, KV), _init((1,), (0, 2)), name="q_einsum",
                   **kw)("btd,ndh->btnh", x)
        kv = Einsum((2, k, width, h), (None, KV_HEADS, EMBED, KV), _init((2,), (1, 3), (0,)),
                    name="kv_einsum", **kw)("bsd,ckdh->cbskh", x)
        q = layers.constrain(apply_rope(q, positions, self.rope_max_wavelength),
                             layers.ACT_HEADS)
        q = q * jnp.asarray(h ** -0.5, q.dtype)
        key = layers.constrain(apply_rope(kv[0], positions, self.rope_max_wavelength), ACT_KV)
        value = layers.constrain(kv[1], ACT_KV)
        if cache is not None:
            start = (0, index, 0, 0)
            cache = (jax.lax.dynamic_update_slice(cache[0], key.astype(cache[0].dtype), start),
                     jax.lax.dynamic_update_slice(cache[1], value.astype(cache[1].dtype), start))
            key, value = cache
        b, t = q.shape[:2]
        q = q.reshape(b, t, k, n // k, h)
        logits = jnp.einsum("btkgh,bskh->bkgts", q, key.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        logits = logits + bias[:, :, None]                      # [B, 1, 1, T, S]
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        ctx = jnp.einsum("bkgts,bskh->btkgh", probs, value.astype(self.dtype))
        ctx = layers.constrain(ctx.reshape(b, t, n, h), layers.ACT_HEADS)
        out = Einsum((n, h, width), (HEADS, KV, EMBED), _init((0, 1), (2,)),
                     name="attn_vec_einsum", **kw)("btnh,nhd->btd", ctx)
        return out, cache


class DecoderBlock(nn.Module):
    """Pre-norm attention + gated MLP, residual; returns (x, cache) for the layer stack."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    mlp_activation: str
    rope_max_wavelength: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, bias, cache, index):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: layers.RMSNorm(name=name, zero_centered=True, **kw)
        y, cache = GroupedQueryAttention(
            self.num_heads, self.num_kv_heads, self.head_dim, self.rope_max_wavelength,
            name="attn", **kw)(norm("pre_attention_norm")(x), positions, bias, cache, index)
        x = x + y
        y = GatedMlp(self.mlp_dim, self.mlp_activation, name="mlp", **kw)(
            norm("pre_ffw_norm")(x))
        x = layers.constrain(x + y, layers.ACT_EMBED)
        return x, cache


class PrefixLM(nn.Module):
    """The decoder-only language model; `VLM` builds the prefix and calls `forward`, `prefill`
    and `decode_step`."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    mlp_activation: str = "gelu"
    rope_max_wavelength: float = 10_000.0
    scan: bool = True
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"llm.num_heads={self.num_heads} must be a multiple of "
                             f"llm.num_kv_heads={self.num_kv_heads}.")
        if self.head_dim % 2:
            raise ValueError(f"llm.head_dim={self.head_dim} must be even (RoPE rotates pairs).")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embedder = Embedder(self.vocab_size, self.width, name="embedder", **kw)
        self.final_norm = layers.RMSNorm(name="final_norm", zero_centered=True, **kw)
        self.layers = layers.stack_layers(
            DecoderBlock, num_layers=self.depth, scan=self.scan, remat=self.remat,
            in_axes=_IN_AXES, name="layers", num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
            mlp_activation=self.mlp_activation, rope_max_wavelength=self.rope_max_wavelength,
            **kw)

    def embed(self, tokens: Array) -> Array:
        return layers.constrain(self.embedder.encode(tokens), layers.ACT_EMBED)

    def _run(self, x, positions, bias, cache, index, logits_from: int, output_ids):
        """The layers over x [B, S, D]; logits [B, S - logits_from, V or K] of the positions
        from `logits_from` on (the prefix's own logits are never needed)."""
        x, cache = layers.apply_stack(self.layers, _IN_AXES, x, positions, bias, cache, index)
        x = self.final_norm(x[:, logits_from:])
        logits = layers.constrain(self.embedder.decode(x, output_ids), layers.ACT_LOGITS)
        return logits, cache

    def forward(self, prefix: Array, prefix_mask: Array, target_tokens: Array,
                all_positions: bool = False) -> Array:
        """Teacher-forced logits [B, Lt, V] (float32) of the target inputs [B, Lt] after the
        embedded prefix [B, P, D] (mask [B, P]); with `all_positions` the logits of every
        position of [prefix, target] ([B, P + Lt, V]; for inspecting attention in tests)."""
        p = prefix.shape[1]
        x = jnp.concatenate([prefix.astype(self.dtype), self.embed(target_tokens)], axis=1)
        mask = jnp.concatenate([prefix_mask.astype(bool),
                                jnp.ones(target_tokens.shape, bool)], axis=1)
        bias = prefix_lm_bias(mask, jnp.arange(x.shape[1]), p)
        logits, _ = self._run(x, prefix_positions(mask), bias, None, None,
                              0 if all_positions else p, None)
        return logits

    def prefill(self, prefix: Array, prefix_mask: Array, tokens: Array, max_len: int,
                output_ids: Array | None = None) -> tuple[Array, PrefixDecodeState]:
        """Runs the prefix [B, P, D] and the first target tokens [B, S] with a fresh cache of
        P + `max_len` slots. Returns (logits [B, S, V] — [B, S, K] for `output_ids` [K] —,
        PrefixDecodeState)."""
        b, s = tokens.shape
        if s > max_len:
            raise ValueError(f"prefill of {s} tokens does not fit a cache of {max_len}.")
        p = prefix.shape[1]
        total = p + max_len
        x = jnp.concatenate([prefix.astype(self.dtype), self.embed(tokens)], axis=1)
        key_mask = jnp.concatenate([prefix_mask.astype(bool), jnp.ones((b, max_len), bool)],
                                   axis=1)
        positions = prefix_positions(key_mask[:, :p + s])
        bias = prefix_lm_bias(key_mask, jnp.arange(p + s), p)
        shape = (self.depth, b, total, self.num_kv_heads, self.head_dim)
        cache = (jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
        index = jnp.zeros((), jnp.int32)
        logits, cache = self._run(x, positions, bias, cache, index, p, output_ids)
        state = PrefixDecodeState(cache_k=cache[0], cache_v=cache[1], key_mask=key_mask,
                                  position=positions[:, -1] + 1, index=index + p + s)
        return logits, state

    def decode_step(self, state: PrefixDecodeState, tokens: Array,
                    output_ids: Array | None = None) -> tuple[Array, PrefixDecodeState]:
        """One token per row, tokens [B], at slot state.index -> (logits [B, V] or [B, K],
        the next state)."""
        x = self.embed(tokens[:, None])
        # Every slot up to this one holds a real key (the prefix's padding aside), so the
        # prefix-LM rule reduces to causality here.
        bias = prefix_lm_bias(state.key_mask, state.index[None], 0)
        logits, cache = self._run(x, state.position[:, None], bias,
                                  (state.cache_k, state.cache_v), state.index, 0, output_ids)
        state = state.replace(cache_k=cache[0], cache_v=cache[1], position=state.position + 1,
                              index=state.index + 1)
        return logits[:, 0], state


def from_config(cfg: ml_collections.ConfigDict) -> PrefixLM:
    """Builds the LM from `config.model` (reads `llm`, vocab, dtypes, scan, remat)."""
    c = cfg.llm
    return PrefixLM(
        vocab_size=cfg.vocab_size, width=c.width, depth=c.depth, num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim,
        mlp_activation=c.get("mlp_activation", "gelu"),
        rope_max_wavelength=c.get("rope_max_wavelength", 10_000.0),
        scan=cfg.scan_layers, remat=cfg.remat_policy,
        dtype=layers.dtype_from_name(cfg.dtype),
        param_dtype=layers.dtype_from_name(cfg.param_dtype),
        name="llm",
    )
