"""PaliGemma import and parity with Hugging Face transformers (needs the `parity` extra).

A tiny random `PaliGemmaForConditionalGeneration` is written out as big_vision's PaliGemma
`.npz` (`img/...`, `llm/...`; the layout transformers' `convert_paligemma_weights_to_hf.py`
reads, inverted here tensor by tensor), imported by `rt2_jax.tools.import_weights` into a
decoder-only config of the same shape, and the teacher-forced logits of [image, prompt,
target] with a bidirectional prefix and a causal target are compared with transformers'.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import base  # noqa: E402
from rt2_jax import checkpoints  # noqa: E402
from rt2_jax.models import params as params_lib  # noqa: E402
from rt2_jax.models.vlm import VLM  # noqa: E402
from rt2_jax.tools import import_weights, param_count  # noqa: E402

VOCAB, IMAGE, PATCH = 512, 32, 8
WIDTH, HEADS, KV_HEADS, HEAD_DIM, MLP, DEPTH = 64, 4, 1, 32, 128, 2   # heads * head_dim != width
VIT = dict(patch_size=PATCH, width=32, depth=2, mlp_dim=64, num_heads=4)
B, PROMPT, TARGET = 2, 6, 5
N_IMG = (IMAGE // PATCH) ** 2


def hf_model():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(
        text_config=dict(model_type="gemma", vocab_size=VOCAB, hidden_size=WIDTH,
                         intermediate_size=MLP, num_hidden_layers=DEPTH,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         head_dim=HEAD_DIM, hidden_activation="gelu_pytorch_tanh"),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=VIT["width"],
                           intermediate_size=VIT["mlp_dim"], num_hidden_layers=VIT["depth"],
                           num_attention_heads=VIT["num_heads"], image_size=IMAGE,
                           patch_size=PATCH, vision_use_head=False),
        projection_dim=WIDTH, image_token_index=VOCAB)   # out of vocabulary: a placeholder
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():   # random everything, norms included (Gemma's start at 0)
        for name, p in model.named_parameters():
            if "layer_norm" in name or "post_layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight")
                        else 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def big_vision_npz(model, path) -> None:
    """The model's weights in big_vision's PaliGemma layout (stacked layers)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    vis = "model.vision_tower."
    txt = "model.language_model."
    out = {
        "img/embedding/kernel": sd[vis + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
        "img/embedding/bias": sd[vis + "embeddings.patch_embedding.bias"],
        "img/pos_embedding": sd[vis + "embeddings.position_embedding.weight"][None],
        "img/Transformer/encoder_norm/scale": sd[vis + "post_layernorm.weight"],
        "img/Transformer/encoder_norm/bias": sd[vis + "post_layernorm.bias"],
        "img/head/kernel": sd["model.multi_modal_projector.linear.weight"].T,
        "img/head/bias": sd["model.multi_modal_projector.linear.bias"],
        "llm/embedder/input_embedding": sd[txt + "embed_tokens.weight"],
        "llm/final_norm/scale": sd[txt + "norm.weight"],
    }
    d, heads, hd = VIT["width"], VIT["num_heads"], VIT["width"] // VIT["num_heads"]

    def vit_layer(i):
        p = f"{vis}encoder.layers.{i}."
        attn = {}
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            attn[f"{ours}/kernel"] = sd[p + f"self_attn.{theirs}.weight"].T.reshape(d, heads, hd)
            attn[f"{ours}/bias"] = sd[p + f"self_attn.{theirs}.bias"].reshape(heads, hd)
        attn["out/kernel"] = sd[p + "self_attn.out_proj.weight"].T.reshape(heads, hd, d)
        attn["out/bias"] = sd[p + "self_attn.out_proj.bias"]
        layer = {f"MultiHeadDotProductAttention_0/{k}": v for k, v in attn.items()}
        for n, theirs in ((0, "layer_norm1"), (1, "layer_norm2")):
            layer[f"LayerNorm_{n}/scale"] = sd[p + f"{theirs}.weight"]
            layer[f"LayerNorm_{n}/bias"] = sd[p + f"{theirs}.bias"]
        for n, theirs in ((0, "fc1"), (1, "fc2")):
            layer[f"MlpBlock_0/Dense_{n}/kernel"] = sd[p + f"mlp.{theirs}.weight"].T
            layer[f"MlpBlock_0/Dense_{n}/bias"] = sd[p + f"mlp.{theirs}.bias"]
        return layer

    def llm_layer(i):
        p = f"{txt}layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"].reshape(HEADS, HEAD_DIM, WIDTH).transpose(0, 2, 1)
        k, v = (sd[p + f"self_attn.{n}_proj.weight"].reshape(KV_HEADS, HEAD_DIM, WIDTH)
                .transpose(0, 2, 1) for n in ("k", "v"))
        o = sd[p + "self_attn.o_proj.weight"].reshape(WIDTH, HEADS, HEAD_DIM).transpose(1, 2, 0)
        return {"attn/q_einsum/w": q, "attn/kv_einsum/w": np.stack([k, v]),
                "attn/attn_vec_einsum/w": o,
                "mlp/gating_einsum": np.stack([sd[p + "mlp.gate_proj.weight"].T,
                                               sd[p + "mlp.up_proj.weight"].T]),
                "mlp/linear": sd[p + "mlp.down_proj.weight"].T,
                "pre_attention_norm/scale": sd[p + "input_layernorm.weight"],
                "pre_ffw_norm/scale": sd[p + "post_attention_layernorm.weight"]}

    for prefix, layer_fn, depth in (("img/Transformer/encoderblock/", vit_layer, VIT["depth"]),
                                    ("llm/layers/", llm_layer, DEPTH)):
        layers = [layer_fn(i) for i in range(depth)]
        for key in layers[0]:
            out[prefix + key] = np.stack([layer[key] for layer in layers])
    np.savez(path, **out)


def our_config(scan: bool = True):
    c = base.base_config()
    c.image_size, c.max_prompt_len, c.max_target_len = IMAGE, PROMPT, TARGET
    c.model = base.decoder_only_model_config(
        vocab_size=VOCAB, vit=VIT,
        llm=dict(width=WIDTH, depth=DEPTH, num_heads=HEADS, num_kv_heads=KV_HEADS,
                 head_dim=HEAD_DIM, mlp_dim=MLP))
    c.model.scan_layers = scan
    return c


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("paligemma")
    model = hf_model()
    npz = root / "paligemma.npz"
    big_vision_npz(model, npz)
    config = our_config()
    lines = []
    report = import_weights.import_weights(config, str(root / "out"), paligemma=str(npz),
                                           log=lines.append)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                         params_lib.unbox(param_count.abstract_params(config)))
    params = jax.tree.map(np.asarray, checkpoints.load_params_like(str(root / "out"), zeros))
    return dict(hf=model, config=config, params=params, report=report, lines=lines, npz=npz,
                root=root)


def test_logits_match_transformers_paligemma(imported):
    s = imported
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (B, IMAGE, IMAGE, 3)).astype(np.uint8)
    prompt = rng.integers(2, VOCAB, (B, PROMPT)).astype(np.int32)
    target = rng.integers(2, VOCAB, (B, TARGET)).astype(np.int32)
    model = VLM.from_config(s["config"])
    ours = np.asarray(jax.jit(lambda p, *a: model.apply({"params": p}, *a))(
        s["params"], image, prompt, np.ones_like(prompt, bool), target))
    ids = np.concatenate([np.full((B, N_IMG), VOCAB), prompt, target], axis=1)
    token_types = np.concatenate([np.zeros((B, N_IMG + PROMPT)), np.ones((B, TARGET))], axis=1)
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        theirs = s["hf"](input_ids=torch.from_numpy(ids.astype(np.int64)), pixel_values=pixels,
                         token_type_ids=torch.from_numpy(token_types.astype(np.int64)),
                         attention_mask=torch.ones(ids.shape, dtype=torch.long),
                         ).logits.numpy()[:, N_IMG + PROMPT:]
    assert ours.shape == theirs.shape == (B, TARGET, VOCAB)
    assert np.abs(theirs).max() > 1.0   # not trivially small
    diff = float(np.abs(ours - theirs).max())
    print(f"max abs logit difference vs transformers: {diff:.3g}")
    assert diff <= 1e-4, diff
    # The prefix really is bidirectional in both: a causal prefix would give other logits.
    with torch.inference_mode():
        causal = s["hf"](input_ids=torch.from_numpy(ids.astype(np.int64)), pixel_values=pixels,
                         ).logits.numpy()[:, N_IMG + PROMPT:]
    assert np.abs(causal - theirs).max() > 1e-3


def test_report_uses_every_tensor_and_leaves_nothing_at_init(imported):
    report = imported["report"]
    assert report["unused"] == [] and report["left_at_init"] == []
    used = {e["source"] for e in report["used"]}
    assert {"img/head/kernel", "llm/layers/attn/kv_einsum/w",
            "llm/embedder/input_embedding"} <= used
    assert any("PaliGemma" in line for line in imported["lines"])


def test_import_into_an_unscanned_config_gives_the_same_weights(imported, tmp_path):
    config = our_config(scan=False)
    import_weights.import_weights(config, str(tmp_path / "out"), paligemma=str(imported["npz"]),
                                  log=lambda _: None)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                         params_lib.unbox(param_count.abstract_params(config)))
    params = checkpoints.load_params_like(str(tmp_path / "out"), zeros)
    jax.tree.map(np.testing.assert_array_equal, params_lib.scan(jax.tree.map(np.asarray, params)),
                 imported["params"])


def test_wrong_configs_are_refused_before_reading(imported, tmp_path):
    from configs import tiny

    with pytest.raises(ValueError, match="backbone"):
        import_weights.import_weights(tiny.get_config(), str(tmp_path / "a"),
                                      paligemma=str(imported["npz"]))
    wider = our_config()
    wider.model.llm.mlp_dim = 2 * MLP
    with pytest.raises(ValueError, match=r"shape mismatch.*gating_einsum"):
        import_weights.import_weights(wider, str(tmp_path / "b"), paligemma=str(imported["npz"]))
    with pytest.raises(ValueError, match="alone"):
        import_weights.import_weights(our_config(), str(tmp_path / "c"),
                                      paligemma=str(imported["npz"]), vit=str(imported["npz"]))
