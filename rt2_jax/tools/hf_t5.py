"""Our T5X-named encoder-decoder weights <-> a Hugging Face `T5ForConditionalGeneration`.

Used by the parity test and the decode-latency benchmark as an independent reference on the same
weights. torch and transformers are imported inside the functions that need them, so importing
this module costs nothing and the library never depends on them.

Layout differences handled here:
  - our projections are `DenseGeneral` kernels ([embed, heads, kv] for q/k/v, [heads, kv, embed]
    for the output); HF's are `nn.Linear` weights [out, in] over flattened heads;
  - our relative-position table is [heads, buckets], one per stack; HF keeps an `nn.Embedding`
    [buckets, heads] on layer 0 of each stack's self-attention;
  - our layers are scanned (a leading `layers` axis) or unscanned (`layers_{i}`); HF's are
    `block.{i}`;
  - our logits are untied from the embedding (T5.1.1); recent transformers versions tie
    `lm_head` to `shared` on construction, so `build_model` unties them.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from rt2_jax.models import params as params_lib

# (our layer sub-module, HF layer index, HF attention name) for the attention blocks.
ENCODER_ATTENTION = (("attention", 0, "SelfAttention"),)
DECODER_ATTENTION = (("self_attention", 0, "SelfAttention"),
                      ("encoder_decoder_attention", 1, "EncDecAttention"))
# (our norm name, HF layer index) per stack; the MLP sits in the last HF layer.
ENCODER_NORMS = (("pre_attention_layer_norm", 0), ("pre_mlp_layer_norm", 1))
DECODER_NORMS = (("pre_self_attention_layer_norm", 0), ("pre_cross_attention_layer_norm", 1),
                  ("pre_mlp_layer_norm", 2))


def _encdec_tree(params: Any) -> dict:
    """The encoder-decoder's unscanned numpy parameter tree from a VLM or EncoderDecoder tree."""
    tree = params_lib.unbox(params)
    if "params" in tree:
        tree = tree["params"]
    if "encdec" in tree:
        tree = tree["encdec"]
    for key in ("token_embedder", "encoder", "decoder"):
        if key not in tree:
            raise ValueError(f"Not an encoder-decoder parameter tree: no {key!r} in {list(tree)}.")
    return params_lib.unscan(jax.tree.map(np.asarray, tree))


def _num_layers(stack: dict) -> int:
    return sum(1 for key in stack if key.startswith("layers_"))


def _attention_to_hf(attn: dict) -> dict[str, np.ndarray]:
    d_model = attn["query"]["kernel"].shape[0]
    out = {name[0]: attn[name]["kernel"].reshape(d_model, -1).T
           for name in ("query", "key", "value")}
    out["o"] = attn["out"]["kernel"].reshape(-1, d_model).T
    return out


def to_hf_state_dict(params: Any) -> dict[str, np.ndarray]:
    """Our parameters (VLM or EncoderDecoder tree, scanned or not) -> HF T5 state_dict (numpy).

    Includes the tied-embedding aliases `encoder.embed_tokens.weight` and
    `decoder.embed_tokens.weight` (both equal to `shared.weight`)."""
    tree = _encdec_tree(params)
    sd: dict[str, np.ndarray] = {}
    embedding = tree["token_embedder"]["embedding"]
    for key in ("shared", "encoder.embed_tokens", "decoder.embed_tokens"):
        sd[f"{key}.weight"] = embedding
    sd["lm_head.weight"] = tree["decoder"]["logits_dense"]["kernel"].T
    stacks = (("encoder", ENCODER_ATTENTION, ENCODER_NORMS, "encoder_norm"),
              ("decoder", DECODER_ATTENTION, DECODER_NORMS, "decoder_norm"))
    for stack_name, attentions, norms, final_norm in stacks:
        stack = tree[stack_name]
        prefix = f"{stack_name}.block"
        sd[f"{prefix}.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            stack["relpos_bias"]["rel_embedding"].T)
        for i in range(_num_layers(stack)):
            layer = stack[f"layers_{i}"]
            for ours, hf_layer, hf_name in attentions:
                for proj, weight in _attention_to_hf(layer[ours]).items():
                    sd[f"{prefix}.{i}.layer.{hf_layer}.{hf_name}.{proj}.weight"] = weight
            for ours, hf_layer in norms:
                sd[f"{prefix}.{i}.layer.{hf_layer}.layer_norm.weight"] = layer[ours]["scale"]
            mlp_layer = norms[-1][1]
            for proj in ("wi_0", "wi_1", "wo"):
                sd[f"{prefix}.{i}.layer.{mlp_layer}.DenseReluDense.{proj}.weight"] = (
                    layer["mlp"][proj]["kernel"].T)
        sd[f"{stack_name}.final_layer_norm.weight"] = stack[final_norm]["scale"]
    return {key: np.ascontiguousarray(value, np.float32) for key, value in sd.items()}


def from_hf_state_dict(state_dict: dict[str, Any], num_heads: int, scan: bool = True) -> dict:
    """HF T5 state_dict (torch tensors or numpy) -> our EncoderDecoder parameter tree (numpy).

    The tree is the module's `params` collection (no `params`/`encdec` wrapper); `scan` stacks
    the layers on a leading axis as our scanned modules expect."""
    sd = {key: np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                          np.float32)
          for key, value in state_dict.items()}
    d_model = sd["shared.weight"].shape[1]

    def attention(prefix: str) -> dict:
        q = sd[f"{prefix}.q.weight"]
        head_dim = q.shape[0] // num_heads
        proj = {name: {"kernel": sd[f"{prefix}.{hf}.weight"].T.reshape(d_model, num_heads,
                                                                        head_dim)}
                for name, hf in (("query", "q"), ("key", "k"), ("value", "v"))}
        proj["out"] = {"kernel": sd[f"{prefix}.o.weight"].T.reshape(num_heads, head_dim,
                                                                    d_model)}
        return proj

    tree: dict[str, Any] = {"token_embedder": {"embedding": sd["shared.weight"]}}
    stacks = (("encoder", ENCODER_ATTENTION, ENCODER_NORMS, "encoder_norm"),
              ("decoder", DECODER_ATTENTION, DECODER_NORMS, "decoder_norm"))
    for stack_name, attentions, norms, final_norm in stacks:
        prefix = f"{stack_name}.block"
        num_layers = len({key.split(".")[2] for key in sd if key.startswith(prefix + ".")})
        stack: dict[str, Any] = {
            "relpos_bias": {"rel_embedding": sd[
                f"{prefix}.0.layer.0.SelfAttention.relative_attention_bias.weight"].T},
            final_norm: {"scale": sd[f"{stack_name}.final_layer_norm.weight"]},
        }
        for i in range(num_layers):
            layer: dict[str, Any] = {}
            for ours, hf_layer, hf_name in attentions:
                layer[ours] = attention(f"{prefix}.{i}.layer.{hf_layer}.{hf_name}")
            for ours, hf_layer in norms:
                layer[ours] = {"scale": sd[f"{prefix}.{i}.layer.{hf_layer}.layer_norm.weight"]}
            mlp_layer = norms[-1][1]
            layer["mlp"] = {
                proj: {"kernel": sd[f"{prefix}.{i}.layer.{mlp_layer}.DenseReluDense.{proj}"
                                    ".weight"].T}
                for proj in ("wi_0", "wi_1", "wo")}
            stack[f"layers_{i}"] = layer
        if stack_name == "decoder":
            stack["logits_dense"] = {"kernel": sd["lm_head.weight"].T}
        tree[stack_name] = stack
    return params_lib.scan(tree) if scan else tree


def t5_config(encdec_config: Any, vocab_size: int):
    """A T5.1.1-style `transformers.T5Config` with our `config.model.encdec` dimensions."""
    import transformers

    act = {"gelu": "gated-gelu", "silu": "gated-silu", "relu": "gated-relu",
           "gelu_exact": None}[encdec_config.mlp_activation]
    if act is None:
        raise ValueError("HF T5 has no exact-GELU gated MLP ('gated-gelu' is the tanh form).")
    return transformers.T5Config(
        vocab_size=vocab_size, d_model=encdec_config.d_model, d_kv=encdec_config.head_dim,
        d_ff=encdec_config.d_ff, num_layers=encdec_config.num_encoder_layers,
        num_decoder_layers=encdec_config.num_decoder_layers, num_heads=encdec_config.num_heads,
        relative_attention_num_buckets=encdec_config.rel_pos_buckets,
        relative_attention_max_distance=encdec_config.rel_pos_max_distance,
        dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj=act,
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )


def build_model(encdec_config: Any, vocab_size: int, params: Any | None = None):
    """An eval-mode f32 `T5ForConditionalGeneration` built from a config (nothing downloaded),
    with our `params` copied in when given (otherwise HF's random initialization)."""
    import torch
    import transformers

    model = transformers.T5ForConditionalGeneration(t5_config(encdec_config, vocab_size))
    # T5.1.1 logits are untied from the embedding; give lm_head its own storage.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    if params is not None:
        state = {key: torch.from_numpy(value.copy())
                 for key, value in to_hf_state_dict(params).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"HF T5 state_dict mismatch: missing {missing}, "
                             f"unexpected {unexpected}.")
    # transformers 5 records T5.1.1's unscaled logits as `scale_decoder_outputs`; 4.x reads
    # `tie_word_embeddings` (False here) for the same thing.
    if getattr(model.config, "scale_decoder_outputs", False):
        raise ValueError("HF T5 would rescale decoder outputs by d_model**-0.5 (tied T5 1.0).")
    return model.eval()
