"""The VLM: ViT patch tokens, projected to the language model's width, are concatenated in front
of the prompt's token embeddings; the language model produces the answer or action.

Two backbones (`config.model.backbone`, default "encoder_decoder"):
- "encoder_decoder" (PaLI-X): image tokens + prompt are the encoder's input, the decoder
  produces the target. Parameter tree: `img/...` (the ViT, with `img/head` the projection to
  d_model) and `encdec/...`.
- "decoder_only" (PaLM-E / PaliGemma): image tokens + prompt are the prefix of one decoder-only
  sequence [prefix, target] with full attention inside the prefix and causal attention in the
  target (rt2_jax/models/decoder_only.py). Parameter tree: `img/...` and `llm/...`
  (big_vision's PaliGemma names). The target starts with the same decoder start token, so
  teacher forcing, the loss and the decode loop are the same for both; only the decode state
  differs (`DecodeState` or `PrefixDecodeState`, opaque to the decode loop).

Optional wrist camera (`config.model.wrist_camera`; see rt2_jax/preprocessing.py for the images).
The model then takes `wrist`, a dict of batch arrays: `wrist_present` bool [B] (does this row's
robot have a wrist camera) and, in `tokens` mode, `wrist_image` uint8 [B, H, W, 3]. The encoder
input is [image tokens, wrist tokens (tokens mode), flag token, prompt]: the wrist image goes
through the same ViT, plus a learned `wrist_embedding` that marks its tokens as the wrist
camera's, and is left out of attention (masked) where absent; the flag token is a learned
embedding `wrist_flag` [2, d_model] of wrist_present, so the model can tell a robot without a
wrist camera (a black wrist image) from one whose wrist camera sees something dark. In
`side_by_side` mode both cameras are in `image` and only the flag token is added. Without the
option nothing is added and the parameters are as before.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from rt2_jax import preprocessing
from rt2_jax.models import decoder_only, encoder_decoder, layers, vit
from rt2_jax.models.decoder_only import PrefixDecodeState
from rt2_jax.models.encoder_decoder import DecodeState

Array = jax.Array

ENCODER_DECODER, DECODER_ONLY = "encoder_decoder", "decoder_only"
BACKBONES = (ENCODER_DECODER, DECODER_ONLY)

# Batch keys of the wrist-camera inputs (the `wrist` argument takes those of them a mode needs).
WRIST_KEYS = ("wrist_image", "wrist_present")


def wrist_keys(mode: str) -> tuple[str, ...]:
    """The `wrist` keys the model needs in wrist-camera mode `mode` ("" = none)."""
    if mode == preprocessing.TOKENS:
        return WRIST_KEYS
    return ("wrist_present",) if mode else ()


def wrist_inputs(batch) -> dict | None:
    """The wrist-camera inputs of a batch dict (the model's `wrist` argument); None if none."""
    out = {k: batch[k] for k in WRIST_KEYS if k in batch}
    return out or None


def backbone(model_config) -> str:
    """`config.model.backbone` ("encoder_decoder" when unset, as in configs written before the
    decoder-only backbone existed), checked."""
    name = model_config.get("backbone", ENCODER_DECODER)
    if name not in BACKBONES:
        raise ValueError(f"config.model.backbone={name!r}; use one of {list(BACKBONES)}.")
    return name


def model_width(model_config) -> int:
    """The language model's width (what image tokens are projected to)."""
    if backbone(model_config) == DECODER_ONLY:
        return int(model_config.llm.width)
    return int(model_config.encdec.d_model)


def prompt_query(txt_tokens: Array, mask: Array, score: Array | None = None) -> Array:
    """What the keypoints look for, from the prompt's token embeddings [B, L, D] and mask
    [B, L]: their mean (pad excluded) when `score` is None, else their softmax-weighted mean
    with weights from each embedding's dot product with `score` [D] -> [B, D]. A `score`
    [K, D] gives K weightings, one query per keypoint -> [B, K, D]. A zero `score` is the
    mean. A row without a real token gives zeros either way."""
    real = mask.astype(bool)
    x = txt_tokens.astype(jnp.float32)
    scores = None if score is None else score.astype(jnp.float32).reshape(-1, x.shape[-1])
    if scores is None:
        logits = jnp.zeros((real.shape[0], 1, real.shape[1]), jnp.float32)
    else:
        logits = jnp.einsum("bld,kd->bkl", x, scores)
    weights = jax.nn.softmax(jnp.where(real[:, None], logits, -jnp.inf), axis=-1)
    weights = jnp.where(real[:, None], weights, 0.0)   # all-pad rows: softmax of -inf is nan
    query = jnp.einsum("bkl,bld->bkd", weights, x).astype(txt_tokens.dtype)
    return query if score is not None and score.ndim == 2 else query[:, 0]


def num_encoder_image_tokens(config) -> int:
    """Encoder positions before the prompt: the ViT's tokens per image, twice in `tokens` mode,
    plus the wrist flag token with a wrist camera (`config` = the experiment config)."""
    mode = preprocessing.wrist_camera(config)
    per_image = vit.num_tokens(config.model.vit, int(config.image_size))
    return per_image * (2 if mode == preprocessing.TOKENS else 1) + int(bool(mode))


class VLM(nn.Module):
    """Image + prompt -> decoder logits. Build with `VLM.from_config(config)`."""

    model_config: ml_collections.FrozenConfigDict

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> VLM:
        """`config` is the experiment config (reads `config.model`)."""
        return cls(model_config=ml_collections.FrozenConfigDict(config.model))

    def setup(self):
        cfg = self.model_config
        self.img = vit.from_config(cfg, out_dim=model_width(cfg))
        if self.is_decoder_only:
            self.llm = decoder_only.from_config(cfg)
        else:
            self.encdec = encoder_decoder.from_config(cfg)
        if cfg.vit.get("keypoint_query_attention", False):
            if not cfg.vit.get("keypoint_query", False):
                raise ValueError("vit.keypoint_query_attention pools the prompt into the "
                                 "keypoints' query: set vit.keypoint_query=True too.")
            # Which prompt words say what to look for: one learned score vector, zero at
            # initialization (= the plain mean, so the option starts where keypoint_query does);
            # with keypoint_query_per_keypoint one per keypoint [K, D], so keypoint 0 can read
            # the object a place instruction names and keypoint 1 its card.
            width = model_width(cfg)
            if cfg.vit.get("keypoint_query_per_keypoint", False):
                shape, axes = (int(cfg.vit.get("keypoints", 0)), width), (None, layers.EMBED)
            else:
                shape, axes = (width,), (layers.EMBED,)
            self.keypoint_query_score = self.param(
                "keypoint_query_score", layers.logical_init(nn.initializers.zeros, axes),
                shape, layers.dtype_from_name(cfg.param_dtype))
        elif cfg.vit.get("keypoint_query_per_keypoint", False):
            raise ValueError("vit.keypoint_query_per_keypoint gives each keypoint its own "
                             "weighting of the prompt's words: set vit.keypoint_query=True and "
                             "vit.keypoint_query_attention=True too.")
        mode = self.wrist_mode
        if mode:
            d_model, dtype = model_width(cfg), layers.dtype_from_name(cfg.param_dtype)
            init = layers.logical_init(nn.initializers.normal(stddev=d_model ** -0.5),
                                       (None, layers.EMBED))
            self.wrist_flag = self.param("wrist_flag", init, (2, d_model), dtype)
            if mode == preprocessing.TOKENS:
                self.wrist_embedding = self.param("wrist_embedding", init, (1, d_model), dtype)

    @property
    def is_decoder_only(self) -> bool:
        return backbone(self.model_config) == DECODER_ONLY

    @property
    def wrist_mode(self) -> str:
        """"" (no wrist camera), "side_by_side" or "tokens" (config.model.wrist_camera)."""
        return preprocessing.check_wrist_camera(self.model_config.get("wrist_camera", ""))

    def _check_wrist(self, wrist, batch: int) -> dict | None:
        mode, given = self.wrist_mode, dict(wrist or {})
        needed = wrist_keys(mode)
        missing = [k for k in needed if k not in given]
        extra = sorted(set(given) - set(needed))
        if not mode and given:
            raise ValueError(f"This model has no wrist camera (config.model.wrist_camera is "
                             f"empty) but got wrist inputs {sorted(given)}; leave them out.")
        if missing or extra:
            raise ValueError(
                f"config.model.wrist_camera={mode!r}: the model needs wrist inputs "
                f"{list(needed)}" + (f", missing {missing}" if missing else "")
                + (f", unexpected {extra}" if extra else "") + ".")
        for key, value in given.items():
            if value.shape[0] != batch:
                raise ValueError(f"wrist input {key} has batch {value.shape[0]}, the image "
                                 f"batch is {batch}.")
        return given or None

    def encode(self, image: Array, encoder_tokens: Array, encoder_mask: Array,
               train: bool = False, wrist: dict | None = None) -> tuple[Array, Array]:
        """Returns the encoder output [B, N_img + Le, D] and its mask [B, N_img + Le] (N_img:
        `num_encoder_image_tokens`; `wrist`: see the module docstring). Decoder-only: the
        embedded prefix (image tokens, then prompt embeddings) and its mask, i.e. what the
        language model reads before the target."""
        x, mask = self._inputs(image, encoder_tokens, encoder_mask, train, wrist)
        if self.is_decoder_only:
            return x, mask
        return self.encdec.encode(x, mask, train), mask

    def _inputs(self, image, encoder_tokens, encoder_mask, train, wrist) -> tuple[Array, Array]:
        """Image tokens then prompt embeddings [B, N_img + Le, D], and their mask."""
        if encoder_tokens.shape != encoder_mask.shape:
            raise ValueError(f"encoder_tokens {encoder_tokens.shape} and encoder_mask "
                             f"{encoder_mask.shape} must have the same shape.")
        wrist = self._check_wrist(wrist, image.shape[0])
        txt_tokens = (self.llm if self.is_decoder_only else self.encdec).embed(encoder_tokens)
        query = None
        if self.model_config.vit.get("keypoint_query", False):
            # The prompt as a bag of words: its mean token embedding (pad excluded), or with
            # keypoint_query_attention a learned weighting of its words.
            score = (self.keypoint_query_score
                     if self.model_config.vit.get("keypoint_query_attention", False) else None)
            query = prompt_query(txt_tokens, encoder_mask, score)
        img_tokens, img_mask = self._image_tokens(image, train, query, wrist)
        x = jnp.concatenate([img_tokens.astype(txt_tokens.dtype), txt_tokens], axis=1)
        mask = jnp.concatenate([img_mask, encoder_mask.astype(bool)], axis=1)
        return x, mask

    def _image_tokens(self, image, train, query, wrist) -> tuple[Array, Array]:
        """(tokens [B, N_img, D], mask [B, N_img]) of the camera(s), before the prompt."""
        mode = self.wrist_mode
        if mode != preprocessing.TOKENS:
            tokens = self.img(image, train=train, query=query)
        else:   # one ViT call on both cameras (shared weights), then split
            both = jnp.concatenate([image, wrist["wrist_image"].astype(image.dtype)], axis=0)
            queries = None if query is None else jnp.concatenate([query, query], axis=0)
            main, wrist_tokens = jnp.split(self.img(both, train=train, query=queries), 2, axis=0)
            tokens = jnp.concatenate(
                [main, wrist_tokens + self.wrist_embedding.astype(wrist_tokens.dtype)], axis=1)
        cameras = 2 if mode == preprocessing.TOKENS else 1
        batch, n_main = image.shape[0], tokens.shape[1] // cameras
        mask = jnp.ones((batch, n_main), bool)
        if not mode:
            return tokens, mask
        present = wrist["wrist_present"].astype(bool)
        if mode == preprocessing.TOKENS:   # an absent wrist camera's black image is not read
            mask = jnp.concatenate(
                [mask, jnp.broadcast_to(present[:, None], (batch, n_main))], axis=1)
        flag = self.wrist_flag[present.astype(jnp.int32)][:, None].astype(tokens.dtype)
        tokens = jnp.concatenate([tokens, flag], axis=1)
        return tokens, jnp.concatenate([mask, jnp.ones((batch, 1), bool)], axis=1)

    def __call__(self, image: Array, encoder_tokens: Array, encoder_mask: Array,
                 decoder_input_tokens: Array, train: bool = False,
                 wrist: dict | None = None) -> Array:
        """Teacher-forced logits [B, Ld, V] (float32)."""
        encoded, mask = self.encode(image, encoder_tokens, encoder_mask, train, wrist)
        if self.is_decoder_only:
            return self.llm.forward(encoded, mask, decoder_input_tokens)
        return self.encdec.decode(encoded, mask, decoder_input_tokens, train)

    def prefill(self, image: Array, encoder_tokens: Array, encoder_mask: Array,
                decoder_tokens: Array, max_decode_len: int,
                output_ids: Array | None = None,
                wrist: dict | None = None) -> tuple[Array, DecodeState | PrefixDecodeState]:
        """Runs the ViT and encoder (decoder-only: the prefix) once and the decoder on
        `decoder_tokens` [B,S] (usually the start token). Returns (logits [B,S,V], the decode
        state) for `decode_step`; with `output_ids` [K] only those vocabulary ids are scored
        ([B,S,K])."""
        encoded, mask = self.encode(image, encoder_tokens, encoder_mask, wrist=wrist)
        lm = self.llm if self.is_decoder_only else self.encdec
        return lm.prefill(encoded, mask, decoder_tokens, max_decode_len, output_ids)

    def decode_step(self, state: DecodeState | PrefixDecodeState, tokens: Array,
                    output_ids: Array | None = None
                    ) -> tuple[Array, DecodeState | PrefixDecodeState]:
        """One cached decoder step for tokens [B] -> (logits [B,V] or [B,K], next state)."""
        lm = self.llm if self.is_decoder_only else self.encdec
        return lm.decode_step(state, tokens, output_ids)
