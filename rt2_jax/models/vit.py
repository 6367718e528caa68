"""ViT image tower with big_vision-compatible parameter names.

Parameter tree (scanned):
  embedding/{kernel,bias}                     conv patchify
  pos_embedding                     (1, N, width), learned ("learn") or absent ("sincos2d")
  Transformer/encoderblock/LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
      LayerNorm_1, MlpBlock_0/{Dense_0,Dense_1}      stacked on a leading depth axis
  Transformer/encoder_norm
  head                                        projection of every patch token to `out_dim`
Unscanned, the blocks are `Transformer/encoderblock_{i}` as in big_vision's non-scanned ViT.

Options for other checkpoints: `class_token` (a learned `cls` token [1, 1, width] put in front of
the patch tokens after the position embedding, as big_vision's pool_type="tok"; the output then
has one more token), `mlp_activation` ("gelu" = tanh approximation, "gelu_exact") and
`layernorm_epsilon`; the defaults are big_vision's / SigLIP's.

Robot-policy option: `keypoints` (K > 0) appends K spatial-softmax keypoint tokens, each stating
where one learned feature is in the image (see `_keypoint_tokens`); parameters `keypoint_*`.

ViT-22B options: `parallel_block` (attention and MLP read the same LayerNorm output and are added
to the residual together; no LayerNorm_1), `qk_norm` (LayerNorm on queries and keys) and
`qkv_bias=False`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from rt2_jax import actions as actions_lib
from rt2_jax.models import layers
from rt2_jax.models.layers import EMBED, MLP, Dtype


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding [1, h*w, width] (as in big_vision / MAE)."""
    if width % 4:
        raise ValueError(f"sincos2d position embedding needs width divisible by 4, got {width}.")
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / max(width // 4 - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


# (channels, stride) of the keypoint head's 3x3 convs (`vit.keypoint_convs`'s default): full
# resolution, then half.
KEYPOINT_CHANNELS = ((32, 1), (32, 1), (64, 2))
# Hidden width of the keypoint head's auxiliary action readout (`keypoint_action_head`).
KEYPOINT_ACTION_HIDDEN = 256


def check_keypoint_convs(convs) -> tuple[tuple[int, int], ...]:
    """`vit.keypoint_convs` as a tuple of (channels, stride) pairs, or a ValueError naming it."""
    try:
        pairs = tuple((int(c), int(s)) for c, s in convs)
    except (TypeError, ValueError):
        pairs = ()
    if not pairs or any(c < 1 or s not in (1, 2) for c, s in pairs) or any(
            (c, s) != tuple(raw) for (c, s), raw in zip(pairs, convs, strict=True)):
        raise ValueError(f"vit.keypoint_convs must be a non-empty tuple of (channels >= 1, "
                         f"stride 1 or 2) pairs, e.g. ((32, 2), (32, 1), (64, 1)); got {convs!r}")
    return pairs


def keypoint_map_side(image_size: int, convs=KEYPOINT_CHANNELS) -> int:
    """Side of the keypoint score map: the image side through each conv's stride (SAME)."""
    side = image_size
    for _, stride in check_keypoint_convs(convs):
        side = -(-side // stride)
    return side


def num_tokens(vit_config, image_size: int) -> int:
    """Tokens the image tower outputs per image (`vit_config` = config.model.vit): the patches,
    plus a class token and keypoint tokens when configured."""
    patches = (image_size // vit_config.patch_size) ** 2
    return (patches + int(bool(vit_config.get("class_token", False)))
            + int(vit_config.get("keypoints", 0)))


def keypoint_conv_flops(image_size: int, convs=KEYPOINT_CHANNELS) -> int:
    """Forward FLOPs of the keypoint head's convs (`vit.keypoint_convs`) for one image (before
    the K scores)."""
    flops, side, channels_in = 0, image_size, 3
    for channels, stride in check_keypoint_convs(convs):
        side = -(-side // stride)
        flops += 2 * side * side * 9 * channels_in * channels
        channels_in = channels
    return flops


def keypoint_grid(h: int, w: int) -> np.ndarray:
    """float32 [h*w, 2]: (u, v) of each cell centre of an h x w map in row-major order, u in
    [-1, 1] growing to the right, v in [-1, 1] growing upwards (the top row has the largest v)."""
    v, u = np.mgrid[:h, :w]
    return np.stack([(u.ravel() + 0.5) / w * 2 - 1, 1 - (v.ravel() + 0.5) / h * 2],
                    -1).astype(np.float32)


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout_rate: float = 0.0
    activation: str = "gelu"     # tanh approximation (big_vision, SigLIP); "gelu_exact" (HF ViT)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        width = x.shape[-1]
        dense = lambda f, axes, name: layers.dense_general(
            f, kernel_axes=axes, bias_axes=(axes[-1],), dtype=self.dtype,
            param_dtype=self.param_dtype, name=name,
            kernel_init=nn.initializers.xavier_uniform(),
        )
        h = dense(self.mlp_dim, (EMBED, MLP), "Dense_0")(x)
        h = layers.constrain(layers.activation_fn(self.activation)(h), layers.ACT_MLP)
        h = nn.Dropout(self.dropout_rate)(h, deterministic)
        return dense(width, (MLP, EMBED), "Dense_1")(h)


class Encoder1DBlock(nn.Module):
    """One ViT block; the scan carry is the token sequence [B, N, width]."""

    mlp_dim: int
    num_heads: int
    parallel_block: bool = False
    qk_norm: bool = False
    qkv_bias: bool = True
    mlp_activation: str = "gelu"
    layernorm_epsilon: float = 1e-6
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"ViT width {width} is not divisible by num_heads {self.num_heads}.")
        norm = lambda name: layers.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype,
                                             param_dtype=self.param_dtype, name=name)
        attn = layers.Attention(
            num_heads=self.num_heads, head_dim=width // self.num_heads, out_features=width,
            qkv_bias=self.qkv_bias, out_bias=True, qk_norm=self.qk_norm, scale_query=True,
            dtype=self.dtype, param_dtype=self.param_dtype, name="MultiHeadDotProductAttention_0",
        )
        mlp = MlpBlock(self.mlp_dim, self.dropout_rate, self.mlp_activation, self.dtype,
                       self.param_dtype, name="MlpBlock_0")
        drop = lambda h: nn.Dropout(self.dropout_rate)(h, self.deterministic)
        y = norm("LayerNorm_0")(x)
        if self.parallel_block:
            x = x + drop(attn(y, y)) + drop(mlp(y, self.deterministic))
        else:
            x = x + drop(attn(y, y))
            x = x + drop(mlp(norm("LayerNorm_1")(x), self.deterministic))
        return layers.constrain(x, layers.ACT_EMBED), None


class Encoder(nn.Module):
    depth: int
    block_kwargs: dict
    layernorm_epsilon: float = 1e-6
    scan: bool = True
    remat: str = "none"
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        stack = layers.stack_layers(
            Encoder1DBlock, num_layers=self.depth, scan=self.scan, remat=self.remat,
            in_axes=(), name="encoderblock", deterministic=self.deterministic,
            dtype=self.dtype, param_dtype=self.param_dtype, **self.block_kwargs,
        )
        x, _ = layers.apply_stack(stack, (), x)
        return layers.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="encoder_norm")(x)


class ViT(nn.Module):
    """Image tower: uint8 or [-1,1] images [B,H,W,3] -> patch tokens [B, N, out_dim]."""

    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    out_dim: int | None = None  # output projection width (the LM's d_model); None = no head
    posemb: str = "learn"
    stem: str = "patch"          # patch (a strided conv, as ViT) | conv (ViT_C: 3x3 convs)
    stem_channels: int = 32      # channels of the first conv of a "conv" stem (doubled per conv)
    keypoints: int = 0           # > 0: append this many spatial-softmax keypoint tokens
    keypoint_query: bool = False  # keypoint scores also depend on a query (the prompt)
    keypoint_scale: float = 10.0  # initial inverse temperature of the keypoint softmax (learned)
    keypoint_coord: str = "shared"  # (u, v) -> token: one linear map for all | per_keypoint
    keypoint_action_head: bool = False  # an action readout of the keypoints (training only)
    keypoint_convs: tuple = KEYPOINT_CHANNELS  # (channels, stride) of the keypoint head's convs
    parallel_block: bool = False
    qk_norm: bool = False
    qkv_bias: bool = True
    class_token: bool = False    # big_vision's pool_type="tok": a learned `cls` token in front
    mlp_activation: str = "gelu"  # tanh-approximated GELU; "gelu_exact" for HF ViTModel weights
    layernorm_epsilon: float = 1e-6  # 1e-12 for HF ViTModel weights
    dropout_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array, train: bool = False,
                 query: jax.Array | None = None) -> jax.Array:
        """`query` [B, Q]: what the keypoints look for (with `keypoint_query`; the VLM passes the
        prompt's mean token embedding), or [B, K, Q]: one query per keypoint."""
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"ViT expects images [B,H,W,3], got shape {image.shape}.")
        if image.shape[1] % self.patch_size or image.shape[2] % self.patch_size:
            raise ValueError(
                f"Image size {image.shape[1:3]} is not a multiple of patch_size {self.patch_size}."
            )
        if image.dtype == jnp.uint8:
            image = image.astype(jnp.float32) / 127.5 - 1.0
        x = image.astype(self.dtype)
        kernel = self.patch_size
        if self.stem == "conv":
            x, kernel = self._conv_stem(x), 1
        elif self.stem != "patch":
            raise ValueError(f"Unknown ViT stem {self.stem!r}; use 'patch' or 'conv'.")
        x = nn.Conv(
            self.width, (kernel, kernel), strides=kernel,
            padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype, name="embedding",
            kernel_init=layers.logical_init(nn.initializers.lecun_normal(),
                                            (None, None, None, EMBED)),
            bias_init=layers.logical_init(nn.initializers.zeros, (EMBED,)),
        )(x)
        n, h, w, c = x.shape
        x = jnp.reshape(x, (n, h * w, c))
        self.sow("intermediates", "patch_tokens", x)   # for inspection and tests
        x = x + self._position_embedding(h, w, c).astype(self.dtype)
        if self.class_token:   # after the position embedding, as big_vision does
            cls = self.param("cls", layers.logical_init(nn.initializers.zeros, (None, None, EMBED)),
                             (1, 1, c), self.param_dtype)
            x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (n, 1, 1)), x], axis=1)
        x = layers.constrain(x, layers.ACT_EMBED)
        x = nn.Dropout(self.dropout_rate)(x, not train)
        x = Encoder(
            depth=self.depth, layernorm_epsilon=self.layernorm_epsilon, scan=self.scan,
            remat=self.remat, deterministic=not train, dtype=self.dtype,
            param_dtype=self.param_dtype, name="Transformer",
            block_kwargs=dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                              parallel_block=self.parallel_block, qk_norm=self.qk_norm,
                              qkv_bias=self.qkv_bias, mlp_activation=self.mlp_activation,
                              layernorm_epsilon=self.layernorm_epsilon,
                              dropout_rate=self.dropout_rate),
        )(x)
        if self.keypoint_action_head and self.keypoints < 1:
            raise ValueError("vit.keypoint_action_head reads the keypoints: set "
                             "vit.keypoints >= 1.")
        if self.keypoints:
            if not self.keypoint_scale > 0:
                raise ValueError(f"vit.keypoint_scale (the keypoint softmax's initial inverse "
                                 f"temperature) must be > 0, got {self.keypoint_scale}")
            if self.keypoint_coord not in ("shared", "per_keypoint"):
                raise ValueError(f"vit.keypoint_coord must be 'shared' or 'per_keypoint', got "
                                 f"{self.keypoint_coord!r}")
            if self.keypoint_query and query is None:
                raise ValueError("this ViT's keypoints are conditioned on a query "
                                 "(keypoint_query=True); pass query=[B, Q].")
            x = jnp.concatenate(
                [x, self._keypoint_tokens(image.astype(self.dtype), c,
                                          query if self.keypoint_query else None)], axis=1)
        if self.out_dim:
            x = layers.dense_general(
                self.out_dim, kernel_axes=(None, EMBED), bias_axes=(EMBED,), dtype=self.dtype,
                param_dtype=self.param_dtype, name="head",
            )(x)
        return layers.constrain(x, layers.ACT_EMBED)

    def _keypoint_tokens(self, pixels: jax.Array, width: int,
                         query: jax.Array | None) -> jax.Array:
        """Spatial-softmax keypoints (Levine et al. 2016, "End-to-end training of deep visuomotor
        policies") as `keypoints` extra tokens [B, K, width].

        A small conv net on the pixels (3x3 convs of `keypoint_convs`, (channels, stride) each;
        by default two at full resolution and one of stride 2) scores every location of its
        output map (the image divided by the product of the strides) for each keypoint k; a
        softmax over the locations gives where k is, and its expected position (u, v) in
        [-1, 1] (u to the right, v up) is the keypoint. Its token is a linear map of (u, v) plus
        a learned embedding of k. Patch tokens leave "where is it" to attention learning it from
        position embeddings, which a small model trained briefly does not do (the README's
        toy-world notes); a keypoint token states it in two numbers, so an offset such as
        "object minus gripper" is a difference of two inputs. With a `query` [B, Q] each
        keypoint's score vector is a learned constant plus a linear function of the query, so a
        keypoint can go to the object a prompt names (FiLM-like, as RT-1 conditions its image
        tower on the instruction). Sown as intermediates
        `keypoints` [B, K, 2] and `keypoint_logits` [B, H', W', K].
        Parameters: keypoint_Conv_{i}, keypoint_score, keypoint_query (with a query),
        keypoint_log_scale, keypoint_coord (`keypoint_coord="shared"`) or keypoint_coord_kernel
        [K, 2, width] (`"per_keypoint"`), keypoint_id."""
        f = pixels
        for i, (channels, stride) in enumerate(check_keypoint_convs(self.keypoint_convs)):
            f = nn.gelu(nn.Conv(
                channels, (3, 3), strides=stride, padding="SAME", dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"keypoint_Conv_{i}",
                kernel_init=layers.logical_init(nn.initializers.lecun_normal(),
                                                (None, None, None, None)),
                bias_init=layers.logical_init(nn.initializers.zeros, (None,)))(f))
        # Scores in float32: a softmax over thousands of locations.
        logits = layers.dense_general(
            self.keypoints, kernel_axes=(None, None), bias_axes=(None,), dtype=jnp.float32,
            param_dtype=self.param_dtype, name="keypoint_score")(f.astype(jnp.float32))
        if query is not None:
            channels = f.shape[-1]
            if query.ndim == 3 and query.shape[1] != self.keypoints:
                raise ValueError(f"a per-keypoint query must be [B, {self.keypoints}, Q], got "
                                 f"{query.shape}")
            w = layers.dense_general(
                (channels, self.keypoints), kernel_axes=(None, None, None),
                bias_axes=(None, None), dtype=jnp.float32, param_dtype=self.param_dtype,
                kernel_init=nn.initializers.zeros,   # starts as the unconditioned scores
                name="keypoint_query")(query.astype(jnp.float32))  # [B, C, K] or [B, K, C, K]
            if query.ndim == 3:   # keypoint k's weights from its own query: the k, k diagonal
                w = jnp.diagonal(w, axis1=1, axis2=3)                      # [B, C, K]
            logits = logits + jnp.einsum("bhwc,bck->bhwk", f.astype(jnp.float32), w)
        # A learned inverse temperature (Levine et al.'s alpha) per keypoint. At scale 1 the
        # initial scores vary by well under one nat across the map, so every keypoint starts at
        # the image centre with almost no gradient to leave it, and an action policy sat at the
        # majority label for 1,000+ steps; starting at 10 it reads positions within ~250.
        log_scale = self.param("keypoint_log_scale", layers.logical_init(
            nn.initializers.constant(np.log(self.keypoint_scale)), (None,)),
            (self.keypoints,), self.param_dtype)
        logits = logits * jnp.exp(log_scale.astype(jnp.float32))
        self.sow("intermediates", "keypoint_logits", logits)
        b, h, w, k = logits.shape
        prob = jax.nn.softmax(logits.reshape(b, h * w, k), axis=1)
        uv = jnp.einsum("bnk,nc->bkc", prob, jnp.asarray(keypoint_grid(h, w)))
        self.sow("intermediates", "keypoints", uv)
        if self.keypoint_action_head:
            self._keypoint_action_logits(uv, f, query)
        if self.keypoint_coord == "shared":
            tokens = layers.dense_general(
                width, kernel_axes=(None, EMBED), bias_axes=(EMBED,), dtype=self.dtype,
                param_dtype=self.param_dtype, name="keypoint_coord")(uv.astype(self.dtype))
        else:
            # Keypoint k's (u, v) through its own map [K, 2, width]: keypoint 1's can be minus
            # keypoint 0's, so one attention average over the two tokens already holds the
            # offset between them. Through one shared map an average (positive weights) can
            # only add positions; the offset then needs a nonlinearity to be learned first.
            kernel = self.param("keypoint_coord_kernel", layers.logical_init(
                nn.initializers.normal(stddev=1 / np.sqrt(2)), (None, None, EMBED)),
                (self.keypoints, 2, width), self.param_dtype)
            tokens = jnp.einsum("bkc,kcd->bkd", uv.astype(self.dtype),
                                kernel.astype(self.dtype))
        ident = self.param("keypoint_id", layers.logical_init(
            nn.initializers.normal(stddev=1 / np.sqrt(width)), (None, EMBED)),
            (self.keypoints, width), self.param_dtype)
        tokens = tokens + ident.astype(self.dtype)[None]
        self.sow("intermediates", "keypoint_tokens", tokens)
        return tokens

    def _keypoint_action_logits(self, uv: jax.Array, features: jax.Array,
                                query: jax.Array | None) -> None:
        """Auxiliary action readout of the keypoint head (`keypoint_action_head`): the keypoints,
        the mean conv features and the query (when the keypoints have one) through a two-layer
        MLP to logits over the 256 bins of each of the 8 action dims, sown as intermediates
        `keypoint_action_logits` [B, 8, 256].

        The decoder reads the keypoints only through the encoder-decoder's attention, so at
        initialization the conv head gets almost no gradient from the action tokens: the tiny
        VLM sat at the majority action for 1,000+ steps, where a CNN with this readout left it
        in ~250 and a VLM started from that CNN's head read positions within a few hundred
        (README, toy-world notes). With `train.keypoint_action_weight` > 0 the train step adds
        this readout's cross-entropy on robot rows, a direct path from actions to the conv
        head; decoding never uses it (the policy's actions are still the decoder's tokens).
        Parameters: keypoint_action_Dense_{0,1}, keypoint_action_out."""
        b = uv.shape[0]
        parts = [uv.reshape(b, -1), features.astype(jnp.float32).mean((1, 2))]
        if query is not None:   # per-keypoint queries: their mean (the same width)
            q = query.astype(jnp.float32)
            parts.append(q.mean(1) if q.ndim == 3 else q)
        y = jnp.concatenate(parts, axis=-1)
        for i in range(2):
            y = nn.gelu(layers.dense_general(
                KEYPOINT_ACTION_HIDDEN, kernel_axes=(None, None), bias_axes=(None,),
                dtype=jnp.float32, param_dtype=self.param_dtype,
                name=f"keypoint_action_Dense_{i}")(y))
        logits = layers.dense_general(
            (actions_lib.NUM_DIMS, actions_lib.NUM_BINS), kernel_axes=(None, None, None),
            bias_axes=(None, None), dtype=jnp.float32, param_dtype=self.param_dtype,
            name="keypoint_action_out")(y)
        self.sow("intermediates", "keypoint_action_logits", logits)

    def _conv_stem(self, x: jax.Array) -> jax.Array:
        """ViT_C (Xiao et al. 2021, "Early convolutions help transformers see better"): log2(patch)
        stride-2 3x3 convs with LayerNorm and GELU instead of one strided patchify, so each token
        carries where inside its patch things are; the 1x1 `embedding` conv then projects to
        `width`. Parameters: stem_Conv_{i}, stem_LayerNorm_{i}."""
        n = int(np.log2(self.patch_size))
        if 2 ** n != self.patch_size:
            raise ValueError(f"a conv stem needs a power-of-two patch_size, got {self.patch_size}.")
        channels = self.stem_channels
        for i in range(n):
            x = nn.Conv(channels, (3, 3), strides=2, padding="SAME", dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"stem_Conv_{i}",
                        kernel_init=layers.logical_init(nn.initializers.lecun_normal(),
                                                        (None, None, None, None)),
                        bias_init=layers.logical_init(nn.initializers.zeros, (None,)))(x)
            x = layers.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                                 name=f"stem_LayerNorm_{i}")(x)
            x = nn.gelu(x)
            channels *= 2
        return x

    def _position_embedding(self, h: int, w: int, c: int) -> jax.Array:
        if self.posemb == "learn":
            return self.param(
                "pos_embedding",
                layers.logical_init(nn.initializers.normal(stddev=1 / np.sqrt(c)),
                                    (None, None, EMBED)),
                (1, h * w, c), self.param_dtype,
            )
        if self.posemb == "sincos2d":
            return jnp.asarray(posemb_sincos_2d(h, w, c))
        raise ValueError(f"Unknown ViT posemb {self.posemb!r}; use 'learn' or 'sincos2d'.")


def from_config(cfg: ml_collections.ConfigDict, out_dim: int | None) -> ViT:
    """Builds the image tower from `config.model` (reads `vit`, dtypes, scan and remat)."""
    v = cfg.vit
    return ViT(
        patch_size=v.patch_size, width=v.width, depth=v.depth, mlp_dim=v.mlp_dim,
        num_heads=v.num_heads, out_dim=out_dim, posemb=v.posemb,
        stem=v.get("stem", "patch"), stem_channels=v.get("stem_channels", 32),
        keypoints=v.get("keypoints", 0), keypoint_query=v.get("keypoint_query", False),
        keypoint_scale=v.get("keypoint_scale", 10.0),
        keypoint_coord=v.get("keypoint_coord", "shared"),
        keypoint_action_head=v.get("keypoint_action_head", False),
        keypoint_convs=check_keypoint_convs(v.get("keypoint_convs", KEYPOINT_CHANNELS)),
        parallel_block=v.parallel_block, qk_norm=v.qk_norm, qkv_bias=v.qkv_bias,
        class_token=v.get("class_token", False), mlp_activation=v.get("mlp_activation", "gelu"),
        layernorm_epsilon=v.get("layernorm_epsilon", 1e-6), dropout_rate=v.dropout_rate,
        scan=cfg.scan_layers, remat=cfg.remat_policy,
        dtype=layers.dtype_from_name(cfg.dtype),
        param_dtype=layers.dtype_from_name(cfg.param_dtype),
        name="img",
    )
