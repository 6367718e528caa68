"""Weight import (`rt2_jax.tools.import_weights`) against independent code (needs the `parity`
extra: torch + transformers).

Tiny random models are built with transformers and saved locally — T5 v1.1-, mT5- and UL2-style
encoder-decoders as safetensors (one file, or shards with an index), a SigLIP vision tower as
safetensors and in big_vision's `.npz` layout. The `.npz` is written from the Hugging Face model
with the inverse of transformers' own big_vision -> HF SigLIP conversion
(models/siglip/convert_siglip_to_hf.py), so the key mapping checked is not ours. Our logits and
image embeddings must match transformers' to 1e-4 in float32, with padded prompts and relative
positions beyond the bias table's maximum distance.
"""

import json
import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import tiny  # noqa: E402
from rt2_jax import checkpoints  # noqa: E402
from rt2_jax import tokenizer as tokenizer_lib  # noqa: E402
from rt2_jax.models import params as params_lib  # noqa: E402
from rt2_jax.models import vit  # noqa: E402
from rt2_jax.models.vlm import VLM  # noqa: E402
from rt2_jax.tools import import_weights, weight_maps  # noqa: E402

IMAGE, PATCH = 32, 8                  # 16 image tokens
BUCKETS, MAX_DISTANCE = 8, 12         # sequences below are longer than MAX_DISTANCE
B, LE, LD = 2, 20, 14
LENGTHS = (LE, 9)                     # the second prompt is padded


def model_config(*, scan: bool, activation: str = "gelu", image_size: int = IMAGE):
    c = tiny.get_config()
    c.image_size = image_size
    c.model.scan_layers = scan
    c.model.encdec.mlp_activation = activation
    c.model.encdec.rel_pos_buckets = BUCKETS
    c.model.encdec.rel_pos_max_distance = MAX_DISTANCE
    return c


# ---------------------------------------------------------------------------------------------
# Tiny Hugging Face checkpoints
# ---------------------------------------------------------------------------------------------


def t5_model(kind: str, activation: str):
    c = tiny.get_config().model
    cls_config, cls_model = {
        "t5": (transformers.T5Config, transformers.T5ForConditionalGeneration),
        "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration)}[kind]
    config = cls_config(
        vocab_size=c.vocab_size, d_model=c.encdec.d_model, d_kv=c.encdec.head_dim,
        d_ff=c.encdec.d_ff, num_layers=c.encdec.num_encoder_layers,
        num_decoder_layers=c.encdec.num_decoder_layers, num_heads=c.encdec.num_heads,
        relative_attention_num_buckets=BUCKETS, relative_attention_max_distance=MAX_DISTANCE,
        feed_forward_proj=f"gated-{activation}", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = cls_model(config)
    # Untied logits with their own values (transformers may share storage on construction).
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    return model.eval()


def siglip_model():
    c = tiny.get_config().model.vit
    config = transformers.SiglipVisionConfig(
        hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, image_size=IMAGE, patch_size=PATCH, num_channels=3)
    model = transformers.SiglipVisionModel(config).eval()
    with torch.no_grad():   # non-trivial LayerNorm parameters
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def big_vision_npz(model, path, stacked: bool, class_token: bool = False) -> None:
    """The SigLIP tower in big_vision's layout: the inverse of transformers'
    convert_siglip_to_hf.py (`rename_key`: kernels `.T`, q/k/v `reshape(-1, D)`, the patch
    kernel `transpose(3, 2, 0, 1)`, biases `reshape(-1)`, position embedding `reshape(-1, D)`;
    `split_to_layers` for stacked blocks). Plus tensors an import must leave unused: the MAP
    head, a text tower, the contrastive temperature/bias."""
    sd = {k.removeprefix("vision_model."): v.detach().numpy()
          for k, v in model.state_dict().items()}
    cfg = model.config
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    out = {
        "params/img/embedding/kernel": sd["embeddings.patch_embedding.weight"]
        .transpose(2, 3, 1, 0),
        "params/img/embedding/bias": sd["embeddings.patch_embedding.bias"],
        "params/img/pos_embedding": sd["embeddings.position_embedding.weight"]
        .reshape(1, -1, d),
        "params/img/Transformer/encoder_norm/scale": sd["post_layernorm.weight"],
        "params/img/Transformer/encoder_norm/bias": sd["post_layernorm.bias"],
        "params/img/MAPHead_0/probe": sd["head.probe"],
        "params/img/MAPHead_0/LayerNorm_0/scale": sd["head.layernorm.weight"],
        "params/img/MAPHead_0/MlpBlock_0/Dense_0/kernel": sd["head.mlp.fc1.weight"].T,
        "params/txt/Embed_0/embedding": np.zeros((7, d), np.float32),
        "params/t": np.ones((1,), np.float32),
        "params/b": np.zeros((1,), np.float32),
    }
    if class_token:   # big_vision's pool_type="tok" ViTs
        out["params/img/cls"] = np.zeros((1, 1, d), np.float32)
    blocks = []
    for i in range(cfg.num_hidden_layers):
        hf = lambda name, i=i: sd[f"encoder.layers.{i}.{name}"]
        block = {
            "LayerNorm_0/scale": hf("layer_norm1.weight"),
            "LayerNorm_0/bias": hf("layer_norm1.bias"),
            "LayerNorm_1/scale": hf("layer_norm2.weight"),
            "LayerNorm_1/bias": hf("layer_norm2.bias"),
            "MlpBlock_0/Dense_0/kernel": hf("mlp.fc1.weight").T,
            "MlpBlock_0/Dense_0/bias": hf("mlp.fc1.bias"),
            "MlpBlock_0/Dense_1/kernel": hf("mlp.fc2.weight").T,
            "MlpBlock_0/Dense_1/bias": hf("mlp.fc2.bias"),
            "MultiHeadDotProductAttention_0/out/kernel": hf("self_attn.out_proj.weight").T
            .reshape(heads, d // heads, d),
            "MultiHeadDotProductAttention_0/out/bias": hf("self_attn.out_proj.bias"),
        }
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            block[f"MultiHeadDotProductAttention_0/{ours}/kernel"] = (
                hf(f"self_attn.{theirs}.weight").T.reshape(d, heads, d // heads))
            block[f"MultiHeadDotProductAttention_0/{ours}/bias"] = (
                hf(f"self_attn.{theirs}.bias").reshape(heads, d // heads))
        blocks.append(block)
    for name in blocks[0]:
        if stacked:
            out[f"params/img/Transformer/encoderblock/{name}"] = np.stack([b[name] for b in blocks])
        else:
            for i, b in enumerate(blocks):
                out[f"params/img/Transformer/encoderblock_{i}/{name}"] = b[name]
    np.savez(path, **out)


def vocabulary_without_numbers(path) -> str:
    """The shipped vocabulary with the pieces for 10..255 renamed (as in mT5's, numbers above 9
    are then several pieces), so mapping 'integers' is impossible and 'least_frequent' is not."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(tokenizer_lib.default_model_path(), "rb") as f:
        proto.ParseFromString(f.read())
    for piece in proto.pieces:
        if piece.piece.removeprefix("▁").isdigit() and len(piece.piece) > 2:
            piece.piece = "▁#" + piece.piece[1:]
    path.write_bytes(proto.SerializeToString())
    return str(path)


# (name, T5 class, activation, --vit source kind, model scanned)
CASES = {
    "t5v11": ("t5", "gelu", "npz_stacked", False),
    "mt5": ("mt5", "gelu", "hf", True),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> the case's checkpoints on disk, made once per module on first use."""
    made = {}

    def get(name: str) -> dict:
        if name not in made:
            made[name] = _make_sources(name, tmp_path_factory.mktemp(name))
        return made[name]

    return get


def _make_sources(name: str, root) -> dict:
    kind, activation, vit_kind, scan = CASES[name]
    torch.manual_seed(len(name))
    t5, siglip = t5_model(kind, activation), siglip_model()
    encdec_dir = root / "encdec"
    # mT5 sharded (an index + several files), the others one model.safetensors.
    t5.save_pretrained(encdec_dir, max_shard_size="200KB" if kind == "mt5" else "1GB")
    if kind == "mt5":
        vocab = vocabulary_without_numbers(encdec_dir / "spiece.model")
    else:
        vocab = str(encdec_dir / "spiece.model")
        with open(tokenizer_lib.default_model_path(), "rb") as f:
            (encdec_dir / "spiece.model").write_bytes(f.read())
    if vit_kind == "hf":
        vit_path = root / "siglip"
        siglip.save_pretrained(vit_path)
    else:
        vit_path = root / "siglip.npz"
        big_vision_npz(siglip, vit_path, stacked=vit_kind == "npz_stacked")
    config = model_config(scan=scan, activation=activation)
    if kind == "mt5":
        config.actions.mapping = "least_frequent"
    return dict(name=name, kind=kind, config=config, t5=t5, siglip=siglip, root=root,
                encdec_dir=encdec_dir, vit_path=vit_path, vocab=vocab)


@pytest.fixture(scope="module", params=sorted(CASES))
def imported(request, sources):
    s = dict(sources(request.param))
    lines = []
    s["out"] = s["root"] / "out"
    s["report"] = import_weights.import_weights(s["config"], str(s["out"]), vit=str(s["vit_path"]),
                                                encdec=str(s["encdec_dir"]), log=lines.append)
    s["lines"] = lines
    params = checkpoints.load_params_like(str(s["out"]), _abstract_zeros(s["config"]))
    s["params"] = jax.tree.map(np.asarray, params)
    return s


def _abstract_zeros(config):
    from rt2_jax.tools import param_count

    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        params_lib.unbox(param_count.abstract_params(config)))


def _inputs(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, (B, LE)).astype(np.int32)
    mask = np.arange(LE)[None] < np.asarray(LENGTHS)[:, None]
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    decoder = rng.integers(2, vocab, (B, LD)).astype(np.int32)
    decoder[:, 0] = 0
    image = rng.integers(0, 256, (B, IMAGE, IMAGE, 3)).astype(np.uint8)
    return tokens, mask, decoder, image


def _hf_logits(t5, mask, decoder, input_ids=None, inputs_embeds=None):
    as_torch = lambda x: None if x is None else torch.from_numpy(x)
    with torch.inference_mode():
        return t5(input_ids=as_torch(None if input_ids is None else input_ids.astype(np.int64)),
                  inputs_embeds=as_torch(inputs_embeds),
                  attention_mask=torch.from_numpy(mask.astype(np.int64)),
                  decoder_input_ids=torch.from_numpy(decoder.astype(np.int64))).logits.numpy()


def test_encoder_decoder_logits_match_transformers(imported):
    """Prompt ids -> logits through the encoder-decoder alone (the whole model below adds the
    image tokens)."""
    s = imported
    tokens, mask, decoder, _ = _inputs(s["config"].model.vocab_size)
    model = VLM.from_config(s["config"])

    def run(module, tokens, mask, decoder):
        e = module.encdec
        return e.decode(e.encode(e.embed(tokens), mask), mask, decoder)

    apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=run))
    ours = np.asarray(apply(s["params"], tokens, mask, decoder))
    theirs = _hf_logits(s["t5"], input_ids=tokens, mask=mask, decoder=decoder)
    assert ours.shape == theirs.shape == (B, LD, s["config"].model.vocab_size)
    assert np.abs(theirs).max() > 0.5    # not trivially small
    diff = float(np.abs(ours - theirs).max())
    print(f"{s['name']}: encoder-decoder logits max abs diff {diff:.2e}")
    assert diff <= 1e-4


def _our_image_embeddings(config, params, image):
    tower = vit.from_config(config.model, out_dim=None)
    img = {k: v for k, v in params["img"].items() if k != "head"}
    return np.asarray(jax.jit(tower.apply)({"params": img}, image))


def test_image_embeddings_match_transformers_siglip(imported):
    s = imported
    _, _, _, image = _inputs(s["config"].model.vocab_size)
    ours = _our_image_embeddings(s["config"], s["params"], image)
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        theirs = s["siglip"](pixel_values=pixels).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (B, (IMAGE // PATCH) ** 2, 64)
    diff = float(np.abs(ours - theirs).max())
    print(f"{s['name']}: image embeddings max abs diff {diff:.2e}")
    assert np.abs(theirs).max() > 0.5 and diff <= 1e-4


def test_whole_model_matches_siglip_into_t5(imported):
    """The imported VLM end to end: SigLIP's patch tokens, through the (initialized) projection,
    in front of T5's prompt embeddings, into T5."""
    s = imported
    tokens, mask, decoder, image = _inputs(s["config"].model.vocab_size, seed=1)
    ours = np.asarray(jax.jit(VLM.from_config(s["config"]).apply)(
        {"params": s["params"]}, image, tokens, mask, decoder))
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    head = s["params"]["img"]["head"]
    with torch.inference_mode():
        patches = s["siglip"](pixel_values=pixels).last_hidden_state.numpy()
        text = s["t5"].shared(torch.from_numpy(tokens.astype(np.int64))).numpy()
    projected = patches @ head["kernel"] + head["bias"]
    embeds = np.concatenate([projected, text], axis=1).astype(np.float32)
    full_mask = np.concatenate([np.ones(patches.shape[:2], bool), mask], axis=1)
    theirs = _hf_logits(s["t5"], inputs_embeds=embeds, mask=full_mask, decoder=decoder)
    diff = float(np.abs(ours - theirs).max())
    print(f"{s['name']}: whole-model logits max abs diff {diff:.2e}")
    assert diff <= 1e-4


def test_an_import_loads_into_the_other_layer_layout(imported):
    """Written scanned (or not) as its config says; `init_from` also fits the other layout."""
    other = imported["config"].copy_and_resolve_references()
    other.model.scan_layers = not other.model.scan_layers
    loaded = checkpoints.load_params_like(str(imported["out"]), _abstract_zeros(other))
    relayout = params_lib.unscan if imported["config"].model.scan_layers else params_lib.scan
    expected = params_lib.flatten(relayout(imported["params"]))
    loaded = params_lib.flatten(loaded)
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(loaded[key]), value, key)


def test_report_names_used_unused_and_initialized_tensors(imported):
    s = imported
    report = s["report"]
    saved = json.loads((s["out"] / import_weights.REPORT_FILE).read_text())
    assert saved["used"] == report["used"] and saved["layout"] == (
        "scanned" if s["config"].model.scan_layers else "unscanned")
    used = {e["source"] for e in report["used"]}
    unused = {e["source"] for e in report["unused"]}
    assert "shared.weight" in used and "lm_head.weight" in used
    if s["name"] == "mt5":
        # SigLIP's attention-pooling head (prefixed `vision_model.` by older transformers).
        assert any(k.endswith("head.probe") for k in unused)
    else:
        assert {"params/img/MAPHead_0/probe", "params/txt/Embed_0/embedding", "params/t"} <= unused
    assert not used & unused
    # Every source tensor is accounted for, once.
    count = sum(src["tensors"] for src in report["sources"].values())
    assert len(used) + len(unused) == count == len(report["used"]) + len(report["unused"])
    left = {e["target"] for e in report["left_at_init"]}
    assert left == {"img/head/kernel", "img/head/bias"}
    assert report["resized"] == []
    memory = report["memory"]
    assert memory["output_bytes"] == 4 * params_lib.count(s["params"])
    assert memory["peak_rss_bytes"] >= memory["rss_before_streaming_bytes"] > 0
    assert any(line.startswith("Peak host memory") for line in s["lines"])
    assert any("left at initialization" in line and "img/head/kernel" in line
               for line in s["lines"])
    # The vocabulary's support for the two action mappings.
    tok = report["tokenizer"]
    assert tok["least_frequent"] == "ok"
    if s["name"] == "mt5":
        assert "number 10 encodes to 2 pieces" in tok["integers"]
    else:
        assert tok["integers"] == "ok"
    assert (s["out"] / "tokenizer.model").read_bytes() == open(s["vocab"], "rb").read()


# ---------------------------------------------------------------------------------------------
# Position embeddings at another image size, mismatches, vocabularies, training from an import
# ---------------------------------------------------------------------------------------------


def test_position_embeddings_are_resampled_bilinearly_on_the_patch_grid():
    """A learned grid that is linear in (row, column) stays exactly linear when resized with
    corner-aligned bilinear interpolation (big_vision's scipy.ndimage.zoom, order 1): row r of
    the new g x g grid sits at old row r * (4 - 1) / (g - 1)."""
    old_rows, old_cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    channels = np.stack([old_rows, old_cols, 2 * old_rows - old_cols], -1)
    old = channels.reshape(1, 16, 3).astype(np.float32)
    new = weight_maps.resample_posemb(old, 49)
    rows, cols = np.meshgrid(np.arange(7.0), np.arange(7.0), indexing="ij")
    rows, cols = rows * 3 / 6, cols * 3 / 6
    expected = np.stack([rows, cols, 2 * rows - cols], -1).reshape(1, 49, 3)
    np.testing.assert_allclose(new, expected, atol=1e-5)
    assert weight_maps.resample_posemb(old, 16) is old
    with pytest.raises(ValueError, match="square"):
        weight_maps.resample_posemb(old, 20)


@pytest.fixture(scope="module")
def import_64px(sources, tmp_path_factory):
    """A per-layer big_vision .npz at 32 px and the T5 v1.1 directory, into a scanned model at
    64 px: blocks stacked as they are read, position embeddings resized from 4 x 4 to 8 x 8."""
    s = sources("t5v11")
    root = tmp_path_factory.mktemp("import_64px")
    npz = root / "per_layer.npz"
    big_vision_npz(s["siglip"], npz, stacked=False, class_token=True)
    config = model_config(scan=True, image_size=2 * IMAGE)
    report = import_weights.import_weights(config, str(root / "out"), vit=str(npz),
                                           encdec=str(s["encdec_dir"]), log=lambda line: None)
    params = checkpoints.load_params_like(str(root / "out"), _abstract_zeros(config))
    return dict(s, config=config, report=report, out=root / "out",
                params=params_lib.flatten(jax.tree.map(np.asarray, params)))


def test_import_at_another_image_size_resizes_and_reports(import_64px):
    s = import_64px
    assert s["report"]["resized"] == [{
        "target": "img/pos_embedding", "from": [1, 16, 64], "to": [1, 64, 64],
        "method": "bilinear (scipy.ndimage.zoom, order 1), as big_vision"}]
    hf = {k.removeprefix("vision_model."): v.numpy() for k, v in s["siglip"].state_dict().items()}
    expected = weight_maps.resample_posemb(
        hf["embeddings.position_embedding.weight"].reshape(1, 16, 64), 64)
    np.testing.assert_array_equal(s["params"]["img/pos_embedding"], expected)
    np.testing.assert_array_equal(
        s["params"]["img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"],
        np.stack([hf[f"encoder.layers.{i}.mlp.fc1.weight"].T for i in range(2)]))
    left = {e["target"] for e in s["report"]["left_at_init"]}
    assert left == {"img/head/kernel", "img/head/bias"}
    assert "params/img/cls" in {e["source"] for e in s["report"]["unused"]}
    assert len(s["report"]["notes"]) == 1 and "params/img/cls is a class token" in (
        s["report"]["notes"][0])


def _copy_with(src_dir, dst_dir, **replace):
    """A copy of a one-file safetensors directory with some tensors replaced."""
    from safetensors.numpy import load_file, save_file

    dst_dir.mkdir()
    for name in os.listdir(src_dir):
        if not name.endswith(".safetensors"):
            (dst_dir / name).write_bytes((src_dir / name).read_bytes())
    tensors = load_file(str(src_dir / "model.safetensors"))
    for key, value in replace.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, str(dst_dir / "model.safetensors"))
    return dst_dir


def test_mismatched_checkpoints_fail_naming_both_tensors_and_shapes(sources, tmp_path):
    s = sources("t5v11")
    out = tmp_path / "out"
    wi = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"
    bad = _copy_with(s["encdec_dir"], tmp_path / "bad_shape", **{
        wi: np.zeros((100, 64), np.float32),
        "decoder.final_layer_norm.weight": np.ones((64,), np.int32),
        "encoder.block.0.layer.0.layer_norm.weight": None})
    with pytest.raises(ValueError) as info:
        import_weights.import_weights(s["config"], str(out), encdec=str(bad))
    message = str(info.value)
    assert (f"shape mismatch: {bad}/model.safetensors: tensor {wi} has shape (100, 64), but "
            "target encdec/encoder/layers_1/mlp/wi_0/kernel has shape (64, 128) and needs a "
            "source of shape (128, 64)") in message
    assert ("dtype mismatch: " in message and "decoder.final_layer_norm.weight (64,) is int32, "
            "but target encdec/decoder/decoder_norm/scale is a float32 parameter") in message
    assert "missing, e.g. ['encoder.block.0.layer.0.layer_norm.weight']" in message
    # The big_vision side: a ViT config with another MLP width, in the scanned layout.
    config = model_config(scan=True)
    config.model.vit.mlp_dim = 96
    with pytest.raises(ValueError, match=re.escape(
            "tensor params/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel has shape "
            "(2, 64, 128), but target img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel[0] "
            "(2 layers) has shape (64, 96) and needs a source of shape (2, 64, 96)")):
        import_weights.import_weights(config, str(out), vit=str(s["vit_path"]))
    # Dimensions that shapes cannot show are checked against config.json.
    config = model_config(scan=False)
    config.model.encdec.update(num_heads=8, head_dim=8)
    with pytest.raises(ValueError, match=re.escape(
            "num_heads=4 but config.model.encdec.num_heads=8; "
            "d_kv=16 but config.model.encdec.head_dim=8")):
        import_weights.import_weights(config, str(out), encdec=str(s["encdec_dir"]))
    config = model_config(scan=False, activation="silu")
    with pytest.raises(ValueError, match=re.escape(
            "feed_forward_proj='gated-gelu' but config.model.encdec.mlp_activation='gated-silu'")):
        import_weights.import_weights(config, str(out), encdec=str(s["encdec_dir"]))
    assert not out.exists()   # nothing was written
    (tmp_path / "t5x").mkdir()
    (tmp_path / "t5x" / "checkpoint").write_bytes(b"")
    with pytest.raises(ValueError, match="T5X checkpoint"):
        import_weights.import_weights(s["config"], str(out), encdec=str(tmp_path / "t5x"))


def test_integers_mapping_is_refused_for_a_vocabulary_without_number_pieces(sources, tmp_path):
    s = sources("mt5")
    config = model_config(scan=True)
    config.actions.mapping = "integers"
    with pytest.raises(ValueError) as info:
        import_weights.import_weights(config, str(tmp_path / "out"), encdec=str(s["encdec_dir"]))
    message = str(info.value)
    assert "config.actions.mapping='integers' does not work" in message
    assert "number 10 encodes to 2 pieces" in message
    assert "Set --config.actions.mapping=least_frequent" in message
    assert not (tmp_path / "out").exists()


def test_gated_silu_and_scaled_tied_logits(tmp_path):
    """UL2's gated-SiLU MLP, and a T5 whose decoder output is scaled by d_model**-0.5 before
    logits tied to the embedding (transformers' `scale_decoder_outputs`): our untied kernel
    gets shared.T * d_model**-0.5."""
    c = tiny.get_config().model
    torch.manual_seed(3)
    config = transformers.T5Config(
        vocab_size=c.vocab_size, d_model=c.encdec.d_model, d_kv=c.encdec.head_dim,
        d_ff=c.encdec.d_ff, num_layers=1, num_decoder_layers=1, num_heads=c.encdec.num_heads,
        relative_attention_num_buckets=BUCKETS, relative_attention_max_distance=MAX_DISTANCE,
        feed_forward_proj="gated-silu", dropout_rate=0.0, decoder_start_token_id=0)
    t5 = transformers.T5ForConditionalGeneration(config).eval()
    assert t5.config.scale_decoder_outputs
    t5.save_pretrained(tmp_path / "t5")
    ours = model_config(scan=True, activation="silu")
    ours.model.encdec.update(num_encoder_layers=1, num_decoder_layers=1)
    ours.model.vit.update(depth=1, width=16, mlp_dim=16, num_heads=1)   # left at init
    report = import_weights.import_weights(ours, str(tmp_path / "out"),
                                           encdec=str(tmp_path / "t5"), log=lambda line: None)
    logits = next(e for e in report["used"]
                  if e["targets"] == ["encdec/decoder/logits_dense/kernel"])
    assert logits["conversion"] == f"transposed, times {64 ** -0.5:.6g}"
    params = checkpoints.load_params_like(str(tmp_path / "out"), _abstract_zeros(ours))
    tokens, mask, decoder, _ = _inputs(c.vocab_size)
    model = VLM.from_config(ours)

    def run(module, tokens, mask, decoder):
        e = module.encdec
        return e.decode(e.encode(e.embed(tokens), mask), mask, decoder)

    mine = np.asarray(jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=run))(
        params, tokens, mask, decoder))
    theirs = _hf_logits(t5, mask, decoder, input_ids=tokens)
    diff = float(np.abs(mine - theirs).max())
    print(f"gated-silu, scaled tied logits: max abs diff {diff:.2e}")
    assert np.abs(theirs).max() > 0.5 and diff <= 1e-4


def test_training_starts_from_the_imported_weights(import_64px):
    """A run with config.train.init_from=<import> starts its first step (`train.fresh_state`,
    what `python -m rt2_jax.train` steps from) at the import's parameters: transformers' weights
    and the resized position embeddings of a 64 px config. With `init_from_regex` leaving out
    the patch embedding and the projection, those keep this seed's initialization — which for
    the projection, left alone by the import, is the import's value too."""
    from rt2_jax import train as train_lib
    from rt2_jax import train_state

    s = import_64px
    config = s["config"].copy_and_resolve_references()
    config.data.global_batch_size = 2
    config.train.update(init_from=str(s["out"]),
                        init_from_regex="^(encdec/|img/Transformer/|img/pos_embedding)")
    setup = train_state.make_setup(config)
    state = train_lib.fresh_state(setup, config)
    assert int(state.step) == 0
    first, imported = params_lib.flatten(state.params), s["params"]
    assert set(first) == set(imported)
    for key, value in imported.items():
        if key.startswith("img/embedding/kernel"):
            assert not np.array_equal(np.asarray(first[key]), value), key
        else:
            np.testing.assert_array_equal(np.asarray(first[key]), value, key)
    wi_0 = s["t5"].state_dict()["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"].numpy()
    np.testing.assert_array_equal(
        np.asarray(first["encdec/encoder/layers/mlp/wi_0/kernel"])[1], wi_0.T)


def test_configs_that_start_from_open_weights():
    from configs import palix_5b, siglip_t5_base

    base = siglip_t5_base.get_config()
    assert (base.model.vit.width, base.model.encdec.d_model, base.model.vocab_size) == (
        768, 768, 32_128)
    assert base.train.init_from == "" and base.tokenizer.model_path == ""
    started = siglip_t5_base.get_config("imports/x")
    assert started.train.init_from == "imports/x"
    assert started.tokenizer.model_path == os.path.join("imports/x", "tokenizer.model")
    siglip = palix_5b.get_config("siglip")
    assert (siglip.model.vit.width, siglip.model.vit.depth, siglip.model.vit.mlp_dim) == (
        1152, 27, 4304)
    assert siglip.actions.mapping == "least_frequent"
    assert palix_5b.get_config().model.vit.width == 1664   # the default stays ViT-G
    with pytest.raises(ValueError, match="variants are"):
        palix_5b.get_config("vit22b")


def test_hugging_face_vit_with_class_token_matches_transformers(tmp_path):
    """A Hugging Face ViTModel (class token, exact GELU, LayerNorm eps 1e-12) into our ViT with
    the options for them; its class token's position embedding is folded into big_vision's
    `cls` (added after the position embeddings). Every token of last_hidden_state, class token
    first, must match."""
    c = tiny.get_config().model.vit
    torch.manual_seed(5)
    vit_model = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, image_size=IMAGE, patch_size=PATCH,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    with torch.no_grad():   # a non-zero class token and position embeddings
        vit_model.embeddings.cls_token.normal_()
        vit_model.embeddings.position_embeddings.normal_()
    vit_model.save_pretrained(tmp_path / "vit")
    config = model_config(scan=True)
    config.model.encdec.update(num_encoder_layers=1, num_decoder_layers=1)   # left at init
    config.model.vit.update(class_token=True, mlp_activation="gelu_exact",
                            layernorm_epsilon=1e-12)
    report = import_weights.import_weights(config, str(tmp_path / "out"),
                                           vit=str(tmp_path / "vit"), log=lambda line: None)
    assert report["resized"] == []
    assert {e["source"] for e in report["unused"]} == {"pooler.dense.weight", "pooler.dense.bias"}
    params = checkpoints.load_params_like(str(tmp_path / "out"), _abstract_zeros(config))
    _, _, _, image = _inputs(config.model.vocab_size)
    ours = _our_image_embeddings(config, params, image)
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        theirs = vit_model(pixel_values=pixels).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (B, (IMAGE // PATCH) ** 2 + 1, c.width)
    diff = float(np.abs(ours - theirs).max())
    print(f"Hugging Face ViT: image embeddings max abs diff {diff:.2e}")
    assert np.abs(theirs).max() > 0.5 and diff <= 1e-4
    # The same checkpoint into a config without a class token is refused, naming the option.
    config.model.vit.class_token = False
    with pytest.raises(ValueError, match=re.escape(
            "class token=True but config.model.vit.class_token=False")):
        import_weights.import_weights(config, str(tmp_path / "out2"), vit=str(tmp_path / "vit"))
