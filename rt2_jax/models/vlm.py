"""PaLI-X-style composition: ViT patch tokens, projected to d_model, are concatenated in front of
the prompt's token embeddings and fed to the encoder; the decoder produces the answer or action.

Parameter tree: `img/...` (the ViT, with `img/head` the projection to d_model) and `encdec/...`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from rt2_jax.models import encoder_decoder, vit
from rt2_jax.models.encoder_decoder import DecodeState

Array = jax.Array


class VLM(nn.Module):
    """Image + prompt -> decoder logits. Build with `VLM.from_config(config)`."""

    model_config: ml_collections.FrozenConfigDict

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> VLM:
        """`config` is the experiment config (reads `config.model`)."""
        return cls(model_config=ml_collections.FrozenConfigDict(config.model))

    def setup(self):
        cfg = self.model_config
        self.img = vit.from_config(cfg, out_dim=cfg.encdec.d_model)
        self.encdec = encoder_decoder.from_config(cfg)

    def encode(self, image: Array, encoder_tokens: Array, encoder_mask: Array,
               train: bool = False) -> tuple[Array, Array]:
        """Returns the encoder output [B, N_img + Le, D] and its mask [B, N_img + Le]."""
        if encoder_tokens.shape != encoder_mask.shape:
            raise ValueError(f"encoder_tokens {encoder_tokens.shape} and encoder_mask "
                             f"{encoder_mask.shape} must have the same shape.")
        txt_tokens = self.encdec.embed(encoder_tokens)
        query = None
        if self.model_config.vit.get("keypoint_query", False):
            # The prompt as a bag of words: its mean token embedding (pad excluded).
            weights = encoder_mask.astype(txt_tokens.dtype)[..., None]
            query = (txt_tokens * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        img_tokens = self.img(image, train=train, query=query)
        x = jnp.concatenate([img_tokens.astype(txt_tokens.dtype), txt_tokens], axis=1)
        mask = jnp.concatenate(
            [jnp.ones(img_tokens.shape[:2], bool), encoder_mask.astype(bool)], axis=1)
        return self.encdec.encode(x, mask, train), mask

    def __call__(self, image: Array, encoder_tokens: Array, encoder_mask: Array,
                 decoder_input_tokens: Array, train: bool = False) -> Array:
        """Teacher-forced logits [B, Ld, V] (float32)."""
        encoded, mask = self.encode(image, encoder_tokens, encoder_mask, train)
        return self.encdec.decode(encoded, mask, decoder_input_tokens, train)

    def prefill(self, image: Array, encoder_tokens: Array, encoder_mask: Array,
                decoder_tokens: Array, max_decode_len: int,
                output_ids: Array | None = None) -> tuple[Array, DecodeState]:
        """Runs the ViT and encoder once and the decoder on `decoder_tokens` [B,S] (usually the
        start token). Returns (logits [B,S,V], DecodeState) for `decode_step`; with
        `output_ids` [K] only those vocabulary ids are scored ([B,S,K])."""
        encoded, mask = self.encode(image, encoder_tokens, encoder_mask)
        return self.encdec.prefill(encoded, mask, decoder_tokens, max_decode_len, output_ids)

    def decode_step(self, state: DecodeState, tokens: Array,
                    output_ids: Array | None = None) -> tuple[Array, DecodeState]:
        """One cached decoder step for tokens [B] -> (logits [B,V] or [B,K], next state)."""
        return self.encdec.decode_step(state, tokens, output_ids)
