"""UL2 / T5.1.1-style encoder-decoder with an incremental-decoding API.

Pre-norm RMSNorm blocks, gated MLP (GELU or SiLU), T5 relative position bias (one table per
stack, shared by its layers), untied output logits, dropout. Parameter names follow T5X:
  token_embedder/embedding                           [vocab, embed] (shared by both stacks)
  encoder/relpos_bias, encoder/layers/{pre_attention_layer_norm, attention, pre_mlp_layer_norm,
          mlp/{wi_0,wi_1,wo}}, encoder/encoder_norm
  decoder/relpos_bias, decoder/layers/{pre_self_attention_layer_norm, self_attention,
          pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp},
          decoder/decoder_norm, decoder/logits_dense     [embed, vocab]

Decoding keeps a `DecodeState`: per-layer cross-attention keys/values computed once from the
encoder output, a self-attention KV cache [layers, B, max_len, heads, head_dim] and the write
index. `prefill` runs the first decoder step(s) and fills both; `decode_step` runs one more.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from rt2_jax.models import layers
from rt2_jax.models.layers import EMBED, VOCAB, Dtype

Array = jax.Array


@flax.struct.dataclass
class DecodeState:
    cache_k: Array        # [L, B, T, H, D]
    cache_v: Array
    cross_k: Array        # [L, B, Le, H, D]
    cross_v: Array
    encoder_mask: Array   # [B, Le] bool
    index: Array          # int32 scalar: the next position to write


def shift_right(targets: Array, start_id: int = 0) -> Array:
    """Decoder inputs from targets: [start, t0, t1, ...] (teacher forcing)."""
    start = jnp.full_like(targets[:, :1], start_id)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)


class EncoderLayer(nn.Module):
    num_heads: int
    head_dim: int
    d_ff: int
    mlp_activation: str
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda h: nn.Dropout(self.dropout_rate)(h, self.deterministic)
        y = layers.RMSNorm(name="pre_attention_layer_norm", **kw)(x)
        y = layers.Attention(
            self.num_heads, self.head_dim, x.shape[-1], scale_query=False,
            dropout_rate=self.dropout_rate, name="attention", **kw,
        )(y, y, bias, self.deterministic)
        x = x + drop(y)
        y = layers.RMSNorm(name="pre_mlp_layer_norm", **kw)(x)
        y = layers.GatedMlp(self.d_ff, self.mlp_activation, self.dropout_rate, name="mlp", **kw)(
            y, self.deterministic)
        x = layers.constrain(x + drop(y), layers.ACT_EMBED)
        return x, None


class DecoderLayer(nn.Module):
    """Causal self-attention (optionally through a KV cache), cross-attention, gated MLP.

    Optional inputs select the mode at trace time: `cache` (k, v) set means incremental decoding
    writing at `index`; `cross_kv` set means cross-attention keys/values were computed before,
    otherwise they are projected from `encoded`. Returns (x, (cache, cross_kv)).
    """

    num_heads: int
    head_dim: int
    d_ff: int
    mlp_activation: str
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, self_bias, cross_bias, encoded, cross_kv, cache, index):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda h: nn.Dropout(self.dropout_rate)(h, self.deterministic)
        attn = lambda name: layers.Attention(
            self.num_heads, self.head_dim, x.shape[-1], scale_query=False,
            dropout_rate=self.dropout_rate, name=name, **kw)

        self_attn = attn("self_attention")
        y = layers.RMSNorm(name="pre_self_attention_layer_norm", **kw)(x)
        k, v = self_attn.project_kv(y)
        if cache is not None:
            cache_k, cache_v = cache
            start = (0, index, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            cache, k, v = (cache_k, cache_v), cache_k, cache_v
        y = self_attn.attend(self_attn.project_query(y), k, v, self_bias, self.deterministic)
        x = x + drop(y)

        cross_attn = attn("encoder_decoder_attention")
        y = layers.RMSNorm(name="pre_cross_attention_layer_norm", **kw)(x)
        if cross_kv is None:
            cross_kv = cross_attn.project_kv(encoded)
        y = cross_attn.attend(cross_attn.project_query(y), *cross_kv, cross_bias,
                              self.deterministic)
        x = x + drop(y)

        y = layers.RMSNorm(name="pre_mlp_layer_norm", **kw)(x)
        y = layers.GatedMlp(self.d_ff, self.mlp_activation, self.dropout_rate, name="mlp", **kw)(
            y, self.deterministic)
        x = layers.constrain(x + drop(y), layers.ACT_EMBED)
        return x, (cache, cross_kv)


class Logits(nn.Module):
    """Untied output projection `kernel` [embed, vocab]. With `output_ids` [K] only those
    columns are computed (constrained decoding needs just the allowed ids), in that order."""

    vocab_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, output_ids: Array | None = None) -> Array:
        kernel = self.param(
            "kernel", layers.logical_init(layers.DEFAULT_KERNEL_INIT, (EMBED, VOCAB)),
            (x.shape[-1], self.vocab_size), self.param_dtype)
        if output_ids is not None:
            kernel = jnp.take(kernel, output_ids, axis=1)
        logits = jnp.einsum("...d,dv->...v", x.astype(self.dtype), kernel.astype(self.dtype))
        return logits.astype(jnp.float32)


class _Stack(nn.Module):
    """Shared fields of the encoder and decoder stacks."""

    num_layers: int
    num_heads: int
    head_dim: int
    d_ff: int
    mlp_activation: str
    rel_pos_buckets: int
    rel_pos_max_distance: int
    dropout_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def layer_kwargs(self, deterministic: bool) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, head_dim=self.head_dim, d_ff=self.d_ff,
                    mlp_activation=self.mlp_activation, dropout_rate=self.dropout_rate,
                    deterministic=deterministic, dtype=self.dtype, param_dtype=self.param_dtype)

    def relpos(self, bidirectional: bool) -> layers.RelativePositionBias:
        return layers.RelativePositionBias(
            self.rel_pos_buckets, self.rel_pos_max_distance, self.num_heads, bidirectional,
            dtype=jnp.float32, param_dtype=self.param_dtype, name="relpos_bias")


class EncoderStack(_Stack):
    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool = False) -> Array:
        """x [B,L,D] input embeddings, mask [B,L] bool (True = real token)."""
        length = x.shape[1]
        bias = self.relpos(bidirectional=True)(length, length) + layers.padding_bias(None, mask)
        x = nn.Dropout(self.dropout_rate)(x, not train)
        in_axes = (nn.broadcast,)
        stack = layers.stack_layers(
            EncoderLayer, num_layers=self.num_layers, scan=self.scan, remat=self.remat,
            in_axes=in_axes, name="layers", **self.layer_kwargs(not train))
        x, _ = layers.apply_stack(stack, in_axes, x, bias)
        x = layers.RMSNorm(name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return nn.Dropout(self.dropout_rate)(x, not train)


class DecoderStack(_Stack):
    vocab_size: int = 0

    @nn.compact
    def __call__(self, x, encoded, encoder_mask, cross_kv=None, cache=None, index=None,
                 train: bool = False, output_ids=None):
        """x [B,S,D] embedded decoder inputs. Without `cache`: teacher forcing over S positions.
        With `cache` ((k, v), each [L,B,T,H,D]): the S inputs sit at positions index..index+S-1.
        Returns (logits [B,S,V] float32 — or [B,S,K] for `output_ids` [K] —, (cache, cross_kv)).
        """
        seq = x.shape[1]
        relpos = self.relpos(bidirectional=False)
        if cache is None:
            self_bias = relpos(seq, seq) + layers.causal_bias(seq)
        else:
            total = cache[0].shape[2]
            q_pos = index + jnp.arange(seq)[:, None]
            allowed = jnp.arange(total)[None, :] <= q_pos
            self_bias = relpos(seq, total, q_offset=index) + jnp.where(
                allowed, 0.0, layers.NEG_INF)[None, None]
        cross_bias = layers.padding_bias(None, encoder_mask)
        x = nn.Dropout(self.dropout_rate)(x, not train)
        in_axes = (nn.broadcast, nn.broadcast, nn.broadcast, 0, 0, nn.broadcast)
        stack = layers.stack_layers(
            DecoderLayer, num_layers=self.num_layers, scan=self.scan, remat=self.remat,
            in_axes=in_axes, name="layers", **self.layer_kwargs(not train))
        x, (cache, cross_kv) = layers.apply_stack(
            stack, in_axes, x, self_bias, cross_bias, encoded, cross_kv, cache, index)
        x = layers.RMSNorm(name="decoder_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.Dropout(self.dropout_rate)(x, not train)
        logits = Logits(self.vocab_size, self.dtype, self.param_dtype, name="logits_dense")(
            x, output_ids)
        logits = layers.constrain(logits, layers.ACT_LOGITS)
        return logits, (cache, cross_kv)


class EncoderDecoder(nn.Module):
    vocab_size: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int
    mlp_activation: str
    num_encoder_layers: int
    num_decoder_layers: int
    rel_pos_buckets: int = 32
    rel_pos_max_distance: int = 128
    dropout_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        stack = dict(
            num_heads=self.num_heads, head_dim=self.head_dim, d_ff=self.d_ff,
            mlp_activation=self.mlp_activation, rel_pos_buckets=self.rel_pos_buckets,
            rel_pos_max_distance=self.rel_pos_max_distance, dropout_rate=self.dropout_rate,
            scan=self.scan, remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
        self.token_embedder = nn.Embed(
            self.vocab_size, self.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=layers.logical_init(nn.initializers.normal(1.0), (VOCAB, EMBED)))
        self.encoder = EncoderStack(num_layers=self.num_encoder_layers, **stack)
        self.decoder = DecoderStack(num_layers=self.num_decoder_layers, vocab_size=self.vocab_size,
                               **stack)

    def embed(self, tokens: Array) -> Array:
        return layers.constrain(self.token_embedder(tokens), layers.ACT_EMBED)

    def encode(self, x: Array, mask: Array, train: bool = False) -> Array:
        return self.encoder(x, mask, train)

    def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
               train: bool = False) -> Array:
        """Teacher-forced logits [B, Ld, V] (float32)."""
        logits, _ = self.decoder(self.embed(decoder_input_tokens), encoded, encoder_mask,
                                 train=train)
        return logits

    def prefill(self, encoded: Array, encoder_mask: Array, tokens: Array, max_len: int,
                output_ids: Array | None = None):
        """Runs the decoder on the first `tokens` [B,S] with a fresh cache of `max_len` positions.

        Returns (logits [B,S,V], DecodeState) with the cross-attention keys/values computed once.
        `output_ids` [K] restricts the logits to those vocabulary ids ([B,S,K]).
        """
        b, s = tokens.shape
        if s > max_len:
            raise ValueError(f"prefill of {s} tokens does not fit a cache of {max_len}.")
        shape = (self.num_decoder_layers, b, max_len, self.num_heads, self.head_dim)
        cache = (jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
        index = jnp.zeros((), jnp.int32)
        logits, (cache, cross_kv) = self.decoder(
            self.embed(tokens), encoded, encoder_mask, cache=cache, index=index,
            output_ids=output_ids)
        state = DecodeState(cache_k=cache[0], cache_v=cache[1], cross_k=cross_kv[0],
                            cross_v=cross_kv[1], encoder_mask=encoder_mask,
                            index=index + s)
        return logits, state

    def decode_step(self, state: DecodeState, tokens: Array, output_ids: Array | None = None):
        """One decoder step for tokens [B] at position state.index -> (logits [B,V], state);
        [B,K] logits for `output_ids` [K]."""
        logits, (cache, _) = self.decoder(
            self.embed(tokens[:, None]), None, state.encoder_mask,
            cross_kv=(state.cross_k, state.cross_v), cache=(state.cache_k, state.cache_v),
            index=state.index, output_ids=output_ids)
        state = state.replace(cache_k=cache[0], cache_v=cache[1], index=state.index + 1)
        return logits[:, 0], state


def from_config(cfg: ml_collections.ConfigDict) -> EncoderDecoder:
    """Builds the encoder-decoder from `config.model` (reads `encdec`, vocab, dtypes, scan)."""
    e = cfg.encdec
    return EncoderDecoder(
        vocab_size=cfg.vocab_size, d_model=e.d_model, num_heads=e.num_heads,
        head_dim=e.head_dim, d_ff=e.d_ff, mlp_activation=e.mlp_activation,
        num_encoder_layers=e.num_encoder_layers, num_decoder_layers=e.num_decoder_layers,
        rel_pos_buckets=e.rel_pos_buckets, rel_pos_max_distance=e.rel_pos_max_distance,
        dropout_rate=e.dropout_rate, scan=cfg.scan_layers, remat=cfg.remat_policy,
        dtype=layers.dtype_from_name(cfg.dtype),
        param_dtype=layers.dtype_from_name(cfg.param_dtype),
        name="encdec",
    )
