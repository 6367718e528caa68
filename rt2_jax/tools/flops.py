"""Model FLOPs of the VLM, counted the way MaxText counts them (for TFLOP/s and MFU reports).

Only matrix multiplications count, at 2 FLOPs per multiply-add:
  - parameter matmuls, per token of the sequence that goes through them: the ViT's patch
    embedding, q/k/v/out projections and MLP over its patch tokens, and its head (projection to
    d_model); the encoder's projections and gated MLP over image + prompt tokens; the decoder's
    self- and cross-attention query/out projections and MLP over target tokens, the
    cross-attention key/value projections over the encoder's tokens (once per decoder layer),
    and the logits matmul over target tokens;
  - a decoder-only model (`llm`): its projections and gated MLP over image + prompt + target
    tokens and its tied logits over target tokens;
  - attention scores (q k^T) and context (weights v): 2 * q_len * k_len * heads * head_dim each,
    with the actual lengths. Causal self-attention is counted in full (the masked half is
    computed, as XLA does; MaxText's newer reports halve it).
Norms, softmax, activations, biases and embedding lookups are not counted. A training step is
3x the forward pass (backward = 2x forward), i.e. 6 FLOPs per parameter per token for the
parameter matmuls.
"""

from __future__ import annotations

from typing import Any

from rt2_jax import preprocessing
from rt2_jax.models import vit as vit_lib
from rt2_jax.models import vlm as vlm_lib

TRAIN_FACTOR = 3  # forward + backward (gradients w.r.t. activations and weights)


def _attention(q_len: int, k_len: int, heads: int, head_dim: int) -> int:
    """Forward FLOPs of scores and context for one example and one layer."""
    return 2 * 2 * q_len * k_len * heads * head_dim


def vit_forward_flops(vit: Any, image_size: int, head_dim: int | None) -> dict[str, int]:
    """Forward FLOPs of the image tower for one image (`vit` = config.model.vit)."""
    patch, width, mlp = vit.patch_size, vit.width, vit.mlp_dim
    tokens = (image_size // patch) ** 2
    per_token = patch * patch * 3 * width                       # patch embedding
    per_token += vit.depth * (4 * width * width + 2 * width * mlp)
    per_token += width * (head_dim or 0)                        # projection to d_model
    attention = vit.depth * _attention(tokens, tokens, vit.num_heads, width // vit.num_heads)
    out = {"vit_matmul": 2 * tokens * per_token, "vit_attention": attention}
    keypoints = int(vit.get("keypoints", 0))
    if keypoints:   # conv head, scores, coordinate tokens and their projection to d_model
        convs = vit_lib.check_keypoint_convs(vit.get("keypoint_convs", vit_lib.KEYPOINT_CHANNELS))
        side = vit_lib.keypoint_map_side(image_size, convs)
        last = convs[-1][0]
        out["vit_keypoints"] = (vit_lib.keypoint_conv_flops(image_size, convs)
                                + 2 * side * side * last * keypoints
                                + 2 * keypoints * (2 * width + width * (head_dim or 0)))
    return out


def encdec_forward_flops(encdec: Any, vocab_size: int, encoder_len: int,
                         decoder_len: int) -> dict[str, int]:
    """Forward FLOPs of the encoder-decoder for one example (`encdec` = config.model.encdec)."""
    d, heads, kv, ff = encdec.d_model, encdec.num_heads, encdec.head_dim, encdec.d_ff
    inner = heads * kv
    mlp = 3 * d * ff                                             # gated: wi_0, wi_1, wo
    enc_layers, dec_layers = encdec.num_encoder_layers, encdec.num_decoder_layers
    encoder = enc_layers * encoder_len * (4 * d * inner + mlp)
    decoder = dec_layers * (decoder_len * (4 * d * inner + 2 * d * inner + mlp)
                            + encoder_len * 2 * d * inner)       # cross-attention keys/values
    return {
        "encoder_matmul": 2 * encoder,
        "encoder_attention": enc_layers * _attention(encoder_len, encoder_len, heads, kv),
        "decoder_matmul": 2 * decoder,
        "decoder_attention": dec_layers * (_attention(decoder_len, decoder_len, heads, kv)
                                           + _attention(decoder_len, encoder_len, heads, kv)),
        "logits": 2 * decoder_len * d * vocab_size,
    }


def llm_forward_flops(llm: Any, vocab_size: int, prefix_len: int,
                      target_len: int) -> dict[str, int]:
    """Forward FLOPs of the decoder-only LM for one example (`llm` = config.model.llm): every
    projection and the gated MLP over prefix + target, attention over all pairs of the
    sequence, tied logits over the target only."""
    d, heads, kv_heads, hd, ff = (llm.width, llm.num_heads, llm.num_kv_heads, llm.head_dim,
                                  llm.mlp_dim)
    length = prefix_len + target_len
    per_token = 2 * d * heads * hd + 2 * d * kv_heads * hd + 3 * d * ff   # q, out, k, v, MLP
    return {
        "decoder_matmul": 2 * llm.depth * length * per_token,
        "decoder_attention": llm.depth * _attention(length, length, heads, hd),
        "logits": 2 * target_len * d * vocab_size,
    }


def forward_flops(config: Any, batch_size: int, *, include_vit: bool = True,
                  prompt_len: int | None = None, target_len: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one batch, by component, plus `total`.

    `config` is the experiment config (reads image_size, max_prompt_len, max_target_len and
    `model`); prompt/target lengths default to the config's fixed shapes. Without the ViT the
    encoder still reads the image-token positions (as embeddings fed from outside).
    """
    m = config.model
    prompt_len = config.max_prompt_len if prompt_len is None else prompt_len
    target_len = config.max_target_len if target_len is None else target_len
    image_tokens = vlm_lib.num_encoder_image_tokens(config)   # incl. a wrist camera's
    cameras = 2 if preprocessing.wrist_camera(config) == preprocessing.TOKENS else 1
    parts: dict[str, int] = {}
    if include_vit:
        parts.update({k: cameras * v for k, v in vit_forward_flops(
            m.vit, config.image_size, vlm_lib.model_width(m)).items()})
    if vlm_lib.backbone(m) == vlm_lib.DECODER_ONLY:
        parts.update(llm_forward_flops(m.llm, m.vocab_size, image_tokens + prompt_len,
                                       target_len))
    else:
        parts.update(encdec_forward_flops(m.encdec, m.vocab_size, image_tokens + prompt_len,
                                          target_len))
    parts = {k: batch_size * v for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def train_flops(config: Any, batch_size: int, **kwargs) -> dict[str, int]:
    """Model FLOPs of one training step (forward + backward), by component, plus `total`."""
    return {k: TRAIN_FACTOR * v for k, v in forward_flops(config, batch_size, **kwargs).items()}
