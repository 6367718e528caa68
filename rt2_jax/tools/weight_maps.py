"""Which source tensor becomes which of our parameters, and how (used by `import_weights`).

A `Rule` maps one source tensor to one target parameter — or, for a source that stacks its
layers on a leading axis (a scanned big_vision checkpoint), to one target per layer. Targets are
named in our unscanned layout (`img/Transformer/encoderblock_3/...`, `encdec/encoder/layers_3/...`);
the importer places them into scanned stacks when the config scans. Three source formats:

- Hugging Face T5 v1.1 / mT5 / UL2 / Flan-T5 (`T5ForConditionalGeneration`,
  `MT5ForConditionalGeneration`): names as in `rt2_jax.tools.hf_t5`;
- Hugging Face SigLIP (`SiglipVisionModel`, or the vision half of a `SiglipModel`) and ViT
  (`ViTModel`: class token, exact GELU, LayerNorm eps 1e-12 — our ViT's options for them);
- big_vision `.npz` ViT / SigLIP: our ViT uses big_vision's names, so a target's source is the
  same path under the checkpoint's prefix (e.g. `params/img/`); stacked or per-layer blocks;
- big_vision PaliGemma `.npz` (`img/...` SigLIP + projection `img/head`, `llm/...` Gemma) into
  the decoder-only backbone, whose names are big_vision's: every target is the same path.

Config checks compare a Hugging Face config.json with `config.model` field by field (head
counts and activations cannot be read from tensor shapes), naming both sides.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import numpy as np

from rt2_jax.tools import hf_t5
from rt2_jax.tools.weight_sources import TensorInfo

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Conversions: source array -> target array of a given shape
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Same:
    """Stored in our layout already."""

    def source_shape(self, target: Shape) -> Shape:
        return target

    def __call__(self, x: np.ndarray, target: Shape) -> np.ndarray:
        return x

    def __str__(self) -> str:
        return "as is"


@dataclasses.dataclass(frozen=True)
class Reshape:
    """The same values in another shape (a bias [H*D] -> [H, D]); `source_shape_fn` gives the
    stored shape from the target's."""

    source_shape_fn: Callable[[Shape], Shape]
    name: str

    def source_shape(self, target: Shape) -> Shape:
        return self.source_shape_fn(target)

    def __call__(self, x: np.ndarray, target: Shape) -> np.ndarray:
        return x.reshape(target)

    def __str__(self) -> str:
        return self.name


FLAT = Reshape(lambda t: (math.prod(t),), "reshaped")


@dataclasses.dataclass(frozen=True)
class Linear:
    """A torch `nn.Linear` weight [out, in] -> our kernel [*in_dims, *out_dims], where the first
    `n_in` target dims are the input's."""

    n_in: int

    def source_shape(self, target: Shape) -> Shape:
        return (math.prod(target[self.n_in:]), math.prod(target[:self.n_in]))

    def __call__(self, x: np.ndarray, target: Shape) -> np.ndarray:
        return x.T.reshape(target)

    def __str__(self) -> str:
        return "transposed"


@dataclasses.dataclass(frozen=True)
class ScaledLinear(Linear):
    """`Linear` times a constant (T5's d_model**-0.5 on tied logits, folded into the kernel)."""

    scale: float = 1.0

    def __call__(self, x: np.ndarray, target: Shape) -> np.ndarray:
        return super().__call__(x, target) * np.asarray(self.scale, x.dtype)

    def __str__(self) -> str:
        return f"transposed, times {self.scale:.6g}"


@dataclasses.dataclass(frozen=True)
class Transpose:
    """Axes permuted: target = source.transpose(axes)."""

    axes: tuple[int, ...]

    def source_shape(self, target: Shape) -> Shape:
        inverse = np.argsort(self.axes)
        return tuple(target[i] for i in inverse)

    def __call__(self, x: np.ndarray, target: Shape) -> np.ndarray:
        return x.transpose(self.axes)

    def __str__(self) -> str:
        return f"transposed {self.axes}"


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    """big_vision's `resample_posemb`: a [1, N, D] grid of learned position embeddings resized
    to `num_tokens` (a square number) by bilinear interpolation (scipy.ndimage.zoom, order 1),
    for an image size other than the one it was trained at."""
    import scipy.ndimage

    old, new = math.isqrt(posemb.shape[1]), math.isqrt(num_tokens)
    if old * old != posemb.shape[1] or new * new != num_tokens:
        raise ValueError(f"position embeddings {posemb.shape} -> {num_tokens} tokens: only square "
                         "grids of patches can be resized.")
    if old == new:
        return posemb
    grid = posemb.reshape(old, old, -1).astype(np.float32)
    grid = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    return grid.reshape(1, new * new, -1)


@dataclasses.dataclass(frozen=True)
class PosEmb:
    """Learned position embeddings [1, N, D] (big_vision) or [N, D] (Hugging Face) -> our
    [1, N', D], resampled as big_vision does when the image size changed (N' != N).
    `class_token`: the source's first row is the class token's (Hugging Face ViT) and is left
    out here (`ClassToken` folds it into the token)."""

    class_token: bool = False

    def accepts(self, source: Shape, target: Shape) -> bool:
        if len(source) not in (2, 3) or (len(source) == 3 and source[0] != 1):
            return False
        n = source[-2] - self.class_token
        return source[-1] == target[-1] and n > 0 and math.isqrt(n) ** 2 == n

    def source_shape(self, target: Shape) -> Shape:
        return target

    def __call__(self, x: np.ndarray, target: Shape) -> np.ndarray:
        x = x.reshape(1, x.shape[-2], x.shape[-1])[:, int(self.class_token):]
        return resample_posemb(x, target[1]) if x.shape != target else x

    def __str__(self) -> str:
        return "position embeddings" + (" after the class token's row" if self.class_token
                                        else "")


@dataclasses.dataclass(frozen=True)
class ClassToken:
    """A Hugging Face ViT class token [1, 1, D], whose position embedding (row 0 of
    `position_key`) is added before the blocks, -> big_vision's `cls`, which is added after the
    position embedding: the same input to the first block, so `cls` = token + that row."""

    position_key: str

    def source_shape(self, target: Shape) -> Shape:
        return target

    def __call__(self, x: np.ndarray, target: Shape, position: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32)
                + position.reshape(-1, x.shape[-1])[:1].astype(np.float32)).reshape(target)

    def __str__(self) -> str:
        return f"plus row 0 of {self.position_key}"


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str
    targets: tuple[str, ...]       # one, or one per layer of a stacked source (leading axis)
    convert: Same | Reshape | Linear | ScaledLinear | Transpose | PosEmb | ClassToken
    same_as: str = ""              # an alias: must equal this (already imported) target

    def expected_source_shape(self, target: Shape) -> Shape:
        per_target = self.convert.source_shape(target)
        return (len(self.targets), *per_target) if len(self.targets) > 1 else per_target


# ---------------------------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------------------------


def _check_fields(source: str, pairs: list[tuple[str, object, str, object]]) -> None:
    """Each pair: (source field, its value, our config field, its value); all must agree."""
    bad = [f"{name}={theirs!r} but {ours_name}={ours!r}"
           for name, theirs, ours_name, ours in pairs if theirs != ours]
    if bad:
        raise ValueError(f"{source} does not match the config: " + "; ".join(bad)
                         + ". Use (or override) a config with the checkpoint's dimensions.")


_T5_ACTIVATIONS = {"gated-gelu": "gelu", "gated-silu": "silu", "gated-relu": "relu"}


def check_t5_config(hf: dict, model_config, where: str) -> None:
    """A T5 v1.1-style config.json (t5 / mt5) against `config.model`."""
    kind = hf.get("model_type")
    if kind not in ("t5", "mt5"):
        raise ValueError(f"{where}: model_type {kind!r} is not a T5 v1.1 / mT5 / UL2 / Flan-T5 "
                         "encoder-decoder (model_type 't5' or 'mt5'); umT5's per-layer relative "
                         "position tables, for one, do not fit this model.")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _T5_ACTIVATIONS:
        raise ValueError(f"{where}: feed_forward_proj={proj!r}; this model's MLP is gated "
                         f"({sorted(_T5_ACTIVATIONS)}). T5 1.0 checkpoints (an ungated ReLU MLP) "
                         "are not supported; use T5 v1.1, mT5, UL2 or Flan-T5.")
    e, m = model_config.encdec, "config.model.encdec"
    layers = hf.get("num_layers")
    _check_fields(where, [
        ("d_model", hf.get("d_model"), f"{m}.d_model", e.d_model),
        ("num_heads", hf.get("num_heads"), f"{m}.num_heads", e.num_heads),
        ("d_kv", hf.get("d_kv"), f"{m}.head_dim", e.head_dim),
        ("d_ff", hf.get("d_ff"), f"{m}.d_ff", e.d_ff),
        ("num_layers", layers, f"{m}.num_encoder_layers", e.num_encoder_layers),
        ("num_decoder_layers", hf.get("num_decoder_layers") or layers,
         f"{m}.num_decoder_layers", e.num_decoder_layers),
        ("feed_forward_proj", proj, f"{m}.mlp_activation",
         {v: k for k, v in _T5_ACTIVATIONS.items()}.get(e.mlp_activation, e.mlp_activation)),
        ("relative_attention_num_buckets", hf.get("relative_attention_num_buckets", 32),
         f"{m}.rel_pos_buckets", e.rel_pos_buckets),
        ("relative_attention_max_distance", hf.get("relative_attention_max_distance", 128),
         f"{m}.rel_pos_max_distance", e.rel_pos_max_distance),
        ("vocab_size", hf.get("vocab_size"), "config.model.vocab_size", model_config.vocab_size),
        ("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-6), "our RMSNorm epsilon", 1e-6),
    ])


def t5_logits_scaled(hf: dict) -> bool:
    """Whether transformers multiplies the decoder output by d_model**-0.5 before `lm_head`
    (T5 1.0 did; T5 v1.1 / mT5 / UL2 / Flan-T5 do not). transformers >= 5 records it as
    `scale_decoder_outputs` (T5) or never scales (mT5), and writes `tie_word_embeddings: true`
    whatever the weights; before 5 a tied config meant scaled logits."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    major = str(hf.get("transformers_version", "4")).split(".")[0]
    if hf.get("model_type") == "mt5" and major.isdigit() and int(major) >= 5:
        return False
    return bool(hf.get("tie_word_embeddings", True))


def hf_vision_config(hf: dict, where: str) -> tuple[str, dict]:
    """("siglip" | "vit", the vision part of config.json) for SiglipVisionModel, SiglipModel
    or ViTModel (also ViTForImageClassification) directories."""
    kind = hf.get("model_type")
    if kind == "siglip":
        return "siglip", hf.get("vision_config") or {}
    if kind in ("siglip_vision_model", "vit"):
        return kind.removesuffix("_vision_model"), hf
    raise ValueError(f"{where}: model_type {kind!r} is not an image tower this import reads "
                     "('siglip', 'siglip_vision_model' or 'vit').")


# Hugging Face activation names -> ours (`rt2_jax.models.layers.activation_fn`).
_HF_GELU = {"gelu_pytorch_tanh": "gelu", "gelu_new": "gelu", "gelu": "gelu_exact"}


def check_vit_config(model_config, where: str, hf: dict | None = None,
                     kind: str = "siglip") -> None:
    """Options of our ViT that a SigLIP / ViT checkpoint must find (and, for a Hugging Face
    directory, its config.json's dimensions and options)."""
    v, m = model_config.vit, "config.model.vit"
    pairs = [("stem", "patch", f"{m}.stem", v.get("stem", "patch")),
             ("parallel_block", False, f"{m}.parallel_block", v.parallel_block)]
    if hf is not None:
        default_act = "gelu_pytorch_tanh" if kind == "siglip" else "gelu"
        act = hf.get("hidden_act", default_act)
        pairs += [
            ("hidden_size", hf.get("hidden_size", 768), f"{m}.width", v.width),
            ("intermediate_size", hf.get("intermediate_size", 3072), f"{m}.mlp_dim", v.mlp_dim),
            ("num_hidden_layers", hf.get("num_hidden_layers", 12), f"{m}.depth", v.depth),
            ("num_attention_heads", hf.get("num_attention_heads", 12), f"{m}.num_heads",
             v.num_heads),
            ("patch_size", hf.get("patch_size", 16), f"{m}.patch_size", v.patch_size),
            ("hidden_act", _HF_GELU.get(act, act), f"{m}.mlp_activation",
             v.get("mlp_activation", "gelu")),
            ("layer_norm_eps", hf.get("layer_norm_eps", 1e-6 if kind == "siglip" else 1e-12),
             f"{m}.layernorm_epsilon", v.get("layernorm_epsilon", 1e-6)),
            ("qkv_bias", hf.get("qkv_bias", True), f"{m}.qkv_bias", v.qkv_bias),
            ("class token", kind == "vit", f"{m}.class_token", v.get("class_token", False)),
            ("qk_norm", False, f"{m}.qk_norm", v.qk_norm),
        ]
    _check_fields(where, pairs)


# ---------------------------------------------------------------------------------------------
# Rules per source format
# ---------------------------------------------------------------------------------------------


def _find_prefix(infos: dict[str, TensorInfo], suffix: str, ndim: int, where: str,
                 prefer: str = "") -> str:
    hits = [k[: -len(suffix)] for k, info in infos.items()
            if k.endswith(suffix) and len(info.shape) == ndim]
    if prefer and len(hits) > 1:
        hits = [h for h in hits if prefer in h] or hits
    if len(hits) != 1:
        found = "none" if not hits else hits
        raise ValueError(f"{where}: expected one image tower's patch embedding '*{suffix}' "
                         f"({ndim}-D), found {found}.")
    return hits[0]


def t5_rules(infos: dict[str, TensorInfo], model_config, hf: dict) -> list[Rule]:
    """Hugging Face T5ForConditionalGeneration / MT5ForConditionalGeneration tensor names.
    Logits come from `lm_head.weight`, or from `shared.weight` where the checkpoint ties them
    (no separate tensor); a d_model**-0.5 output scale (`t5_logits_scaled`) is folded in."""
    e = model_config.encdec
    rules = [Rule("shared.weight", ("encdec/token_embedder/embedding",), Same())]
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if alias in infos:   # tied copies of shared.weight, when a checkpoint stores them
            rules.append(Rule(alias, (), Same(), same_as="encdec/token_embedder/embedding"))
    logits = "lm_head.weight" if "lm_head.weight" in infos else "shared.weight"
    convert = (ScaledLinear(1, e.d_model ** -0.5) if t5_logits_scaled(hf) else Linear(1))
    rules.append(Rule(logits, ("encdec/decoder/logits_dense/kernel",), convert))
    stacks = (("encoder", e.num_encoder_layers, hf_t5.ENCODER_ATTENTION, hf_t5.ENCODER_NORMS,
               "encoder_norm"),
              ("decoder", e.num_decoder_layers, hf_t5.DECODER_ATTENTION, hf_t5.DECODER_NORMS,
               "decoder_norm"))
    for stack, depth, attentions, norms, final_norm in stacks:
        ours, theirs = f"encdec/{stack}", f"{stack}.block"
        rules.append(Rule(f"{theirs}.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          (f"{ours}/relpos_bias/rel_embedding",), Transpose((1, 0))))
        rules.append(Rule(f"{stack}.final_layer_norm.weight", (f"{ours}/{final_norm}/scale",),
                          Same()))
        for i in range(depth):
            layer, hf_layer = f"{ours}/layers_{i}", f"{theirs}.{i}.layer"
            for name, index, hf_name in attentions:
                for proj, hf_proj, n_in in (("query", "q", 1), ("key", "k", 1),
                                            ("value", "v", 1), ("out", "o", 2)):
                    rules.append(Rule(f"{hf_layer}.{index}.{hf_name}.{hf_proj}.weight",
                                      (f"{layer}/{name}/{proj}/kernel",), Linear(n_in)))
            for name, index in norms:
                rules.append(Rule(f"{hf_layer}.{index}.layer_norm.weight",
                                  (f"{layer}/{name}/scale",), Same()))
            mlp_index = norms[-1][1]
            for proj in ("wi_0", "wi_1", "wo"):
                rules.append(Rule(f"{hf_layer}.{mlp_index}.DenseReluDense.{proj}.weight",
                                  (f"{layer}/mlp/{proj}/kernel",), Linear(1)))
    return rules


def siglip_hf_rules(infos: dict[str, TensorInfo], targets: dict[str, Shape], where: str,
                    depth: int) -> list[Rule]:
    """Hugging Face SiglipVisionModel names (the inverse of transformers' big_vision -> HF
    SigLIP conversion). Its attention-pooling head (`head.*`) is not used: the VLM reads every
    patch token."""
    p = _find_prefix(infos, "embeddings.patch_embedding.weight", 4, where, prefer="vision")
    rules = [Rule(f"{p}embeddings.patch_embedding.weight", ("img/embedding/kernel",),
                  Transpose((2, 3, 1, 0))),
             Rule(f"{p}embeddings.patch_embedding.bias", ("img/embedding/bias",), Same())]
    if "img/pos_embedding" in targets:
        rules.append(Rule(f"{p}embeddings.position_embedding.weight", ("img/pos_embedding",),
                          PosEmb()))
    for ours, theirs in (("scale", "weight"), ("bias", "bias")):
        rules.append(Rule(f"{p}post_layernorm.{theirs}", (f"img/Transformer/encoder_norm/{ours}",),
                          Same()))
    for i in range(depth):
        block, hf = f"img/Transformer/encoderblock_{i}", f"{p}encoder.layers.{i}"
        attn = f"{block}/MultiHeadDotProductAttention_0"
        for proj, hf_proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            rules.append(Rule(f"{hf}.self_attn.{hf_proj}.weight", (f"{attn}/{proj}/kernel",),
                              Linear(1)))
            rules.append(Rule(f"{hf}.self_attn.{hf_proj}.bias", (f"{attn}/{proj}/bias",), FLAT))
        rules.append(Rule(f"{hf}.self_attn.out_proj.weight", (f"{attn}/out/kernel",), Linear(2)))
        rules.append(Rule(f"{hf}.self_attn.out_proj.bias", (f"{attn}/out/bias",), Same()))
        for ours, theirs in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
            rules.append(Rule(f"{hf}.{theirs}.weight", (f"{block}/{ours}/scale",), Same()))
            rules.append(Rule(f"{hf}.{theirs}.bias", (f"{block}/{ours}/bias",), Same()))
        for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            rules.append(Rule(f"{hf}.mlp.{theirs}.weight", (f"{block}/MlpBlock_0/{ours}/kernel",),
                              Linear(1)))
            rules.append(Rule(f"{hf}.mlp.{theirs}.bias", (f"{block}/MlpBlock_0/{ours}/bias",),
                              Same()))
    return rules


def vit_hf_rules(infos: dict[str, TensorInfo], targets: dict[str, Shape], where: str,
                 depth: int) -> list[Rule]:
    """Hugging Face ViTModel names (`embeddings.*`, `encoder.layer.{i}.*`, `layernorm`; under
    `vit.` in ViTForImageClassification). The pooler and a classifier are not used."""
    p = _find_prefix(infos, "embeddings.patch_embeddings.projection.weight", 4, where)
    position = f"{p}embeddings.position_embeddings"
    rules = [Rule(f"{p}embeddings.patch_embeddings.projection.weight", ("img/embedding/kernel",),
                  Transpose((2, 3, 1, 0))),
             Rule(f"{p}embeddings.patch_embeddings.projection.bias", ("img/embedding/bias",),
                  Same()),
             Rule(f"{p}embeddings.cls_token", ("img/cls",), ClassToken(position)),
             Rule(position, ("img/pos_embedding",), PosEmb(class_token=True))]
    for ours, theirs in (("scale", "weight"), ("bias", "bias")):
        rules.append(Rule(f"{p}layernorm.{theirs}", (f"img/Transformer/encoder_norm/{ours}",),
                          Same()))
    for i in range(depth):
        block, hf = f"img/Transformer/encoderblock_{i}", f"{p}encoder.layer.{i}"
        attn = f"{block}/MultiHeadDotProductAttention_0"
        for proj in ("query", "key", "value"):
            rules.append(Rule(f"{hf}.attention.attention.{proj}.weight", (f"{attn}/{proj}/kernel",),
                              Linear(1)))
            if f"{hf}.attention.attention.{proj}.bias" in infos:
                rules.append(Rule(f"{hf}.attention.attention.{proj}.bias",
                                  (f"{attn}/{proj}/bias",), FLAT))
        rules.append(Rule(f"{hf}.attention.output.dense.weight", (f"{attn}/out/kernel",),
                          Linear(2)))
        rules.append(Rule(f"{hf}.attention.output.dense.bias", (f"{attn}/out/bias",), Same()))
        for ours, theirs in (("LayerNorm_0", "layernorm_before"),
                             ("LayerNorm_1", "layernorm_after")):
            rules.append(Rule(f"{hf}.{theirs}.weight", (f"{block}/{ours}/scale",), Same()))
            rules.append(Rule(f"{hf}.{theirs}.bias", (f"{block}/{ours}/bias",), Same()))
        for ours, theirs in (("Dense_0", "intermediate.dense"), ("Dense_1", "output.dense")):
            rules.append(Rule(f"{hf}.{theirs}.weight", (f"{block}/MlpBlock_0/{ours}/kernel",),
                              Linear(1)))
            rules.append(Rule(f"{hf}.{theirs}.bias", (f"{block}/MlpBlock_0/{ours}/bias",), Same()))
    return rules


_BLOCK = re.compile(r"/encoderblock_(\d+)/")


def big_vision_rules(infos: dict[str, TensorInfo], targets: dict[str, Shape],
                     where: str) -> list[Rule]:
    """A big_vision ViT / SigLIP `.npz`: every image-tower target but the projection `img/head`
    (big_vision's `head` is a classifier or contrastive head, not a projection into this
    model's encoder) has the same path under the checkpoint's prefix. Blocks may be stacked
    (`Transformer/encoderblock/...`, scanned) or not (`encoderblock_{i}`)."""
    prefix = _find_prefix(infos, "embedding/kernel", 4, where, prefer="img/")
    stacked: dict[str, list[tuple[int, str]]] = {}
    rules = []
    for target in sorted(targets):
        if not target.startswith("img/") or target.startswith("img/head/"):
            continue
        relative = target[len("img/"):]
        block = _BLOCK.search("/" + relative)
        stacked_key = prefix + _BLOCK.sub("/encoderblock/", "/" + relative, count=1)[1:]
        if block and (prefix + relative) not in infos and stacked_key in infos:
            stacked.setdefault(stacked_key, []).append((int(block.group(1)), target))
            continue
        convert = PosEmb() if relative == "pos_embedding" else Same()
        rules.append(Rule(prefix + relative, (target,), convert))
    for key, layers in stacked.items():
        rules.append(Rule(key, tuple(t for _, t in sorted(layers)), Same()))
    return rules


_LLM_LAYER = re.compile(r"/layers_(\d+)/")


def check_paligemma_config(model_config, where: str) -> None:
    """What a PaliGemma checkpoint needs of `config.model` beyond tensor shapes: the
    decoder-only backbone with Gemma's GeGLU MLP, and a ViT with SigLIP's options."""
    backbone = model_config.get("backbone", "encoder_decoder")
    if backbone != "decoder_only":
        raise ValueError(f"{where}: a PaliGemma checkpoint needs config.model.backbone="
                         f"'decoder_only' (the config has {backbone!r}); use "
                         "configs/paligemma_3b.py or a config like it.")
    _check_fields(where, [("Gemma MLP activation", "gelu", "config.model.llm.mlp_activation",
                           model_config.llm.get("mlp_activation", "gelu"))])
    check_vit_config(model_config, where)


def paligemma_rules(infos: dict[str, TensorInfo], targets: dict[str, Shape],
                    where: str) -> list[Rule]:
    """A big_vision PaliGemma `.npz`: every `img/` target (the projection `img/head` included)
    and every `llm/` target has the same path under the checkpoint's prefix (`` or `params/`);
    the language model's layers are stacked on a leading axis (`llm/layers/...`) or not
    (`llm/layers_{i}/...`)."""
    rules = big_vision_rules(infos, targets, where)
    img_prefix = _find_prefix(infos, "embedding/kernel", 4, where, prefer="img/")
    root = img_prefix[: -len("img/")] if img_prefix.endswith("img/") else img_prefix
    rules.append(Rule(img_prefix + "head/kernel", ("img/head/kernel",), Same()))
    if "img/head/bias" in targets:
        rules.append(Rule(img_prefix + "head/bias", ("img/head/bias",), Same()))
    stacked: dict[str, list[tuple[int, str]]] = {}
    for target in sorted(t for t in targets if t.startswith("llm/")):
        layer = _LLM_LAYER.search(target)
        stacked_key = root + _LLM_LAYER.sub("/layers/", target, count=1)
        if layer and (root + target) not in infos and stacked_key in infos:
            stacked.setdefault(stacked_key, []).append((int(layer.group(1)), target))
            continue
        rules.append(Rule(root + target, (target,), Same()))
    for key, layers in stacked.items():
        rules.append(Rule(key, tuple(t for _, t in sorted(layers)), Same()))
    return rules
