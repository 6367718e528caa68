"""Model correctness on CPU with tiny configs: caching, causality, padding, scan, dtypes, counts."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import palix_5b, palix_55b, tiny
from rt2_jax.models import params as params_lib
from rt2_jax.models.encoder_decoder import shift_right
from rt2_jax.models.vlm import VLM
from rt2_jax.tools import param_count

B, LE, LD = 3, 24, 12
ALLOWED_AXES = {"vocab", "embed", "heads", "kv", "mlp", "layers", None}


def _config(**model_overrides):
    c = tiny.get_config()
    for key, value in model_overrides.items():
        node = c.model
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _inputs(seed=0, prompt_lengths=(24, 10, 3)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (B, 64, 64, 3), dtype=np.uint8)
    tokens = rng.integers(3, 1000, (B, LE)).astype(np.int32)
    mask = np.arange(LE)[None, :] < np.asarray(prompt_lengths)[:, None]
    tokens = np.where(mask, tokens, 0)
    targets = rng.integers(3, 1000, (B, LD)).astype(np.int32)
    return image, tokens, mask, targets


def _init(config, seed=0):
    model = VLM.from_config(config)
    image, tokens, mask, targets = _inputs()
    variables = model.init(jax.random.PRNGKey(seed), image, tokens, mask, targets)
    return model, params_lib.unbox(variables)


@pytest.fixture(scope="module")
def tiny_model():
    return _init(tiny.get_config())


def test_cached_decoding_matches_teacher_forcing(tiny_model):
    """Prefill + decode_step through the KV cache == one teacher-forced pass (f32, 1e-5)."""
    model, variables = tiny_model
    image, tokens, mask, targets = _inputs(prompt_lengths=(24, 10, 3))
    dec_in = shift_right(targets)
    full = model.apply(variables, image, tokens, mask, dec_in)
    logits, state = model.apply(variables, image, tokens, mask, dec_in[:, :1], LD,
                                method=VLM.prefill)
    steps = [logits[:, 0]]
    step = jax.jit(lambda s, t: model.apply(variables, s, t, method=VLM.decode_step))
    for t in range(1, LD):
        logit, state = step(state, dec_in[:, t])
        steps.append(logit)
    cached = jnp.stack(steps, axis=1)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
    assert int(state.index) == LD


def test_prefill_of_several_tokens_matches(tiny_model):
    model, variables = tiny_model
    image, tokens, mask, targets = _inputs(seed=1)
    dec_in = shift_right(targets)
    full = model.apply(variables, image, tokens, mask, dec_in)
    logits, state = model.apply(variables, image, tokens, mask, dec_in[:, :5], LD,
                                method=VLM.prefill)
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5, rtol=0)
    nxt, _ = model.apply(variables, state, dec_in[:, 5], method=VLM.decode_step)
    np.testing.assert_allclose(nxt, full[:, 5], atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [0, 5, LD - 1])
def test_decoder_is_causal(tiny_model, t):
    model, variables = tiny_model
    image, tokens, mask, targets = _inputs()
    dec_in = np.asarray(shift_right(targets))
    changed = dec_in.copy()
    changed[:, t] = (changed[:, t] + 17) % 1000
    a = model.apply(variables, image, tokens, mask, dec_in)
    b = model.apply(variables, image, tokens, mask, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-4  # and the change is seen from t on


def test_padded_prompt_positions_change_nothing(tiny_model):
    model, variables = tiny_model
    image, tokens, mask, targets = _inputs(prompt_lengths=(24, 10, 3))
    dec_in = shift_right(targets)
    noisy = np.where(mask, tokens, np.random.default_rng(5).integers(3, 1000, tokens.shape))
    a = model.apply(variables, image, tokens, mask, dec_in)
    b = model.apply(variables, image, noisy.astype(np.int32), mask, dec_in)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # A real prompt token does matter (the mask is not simply ignoring the prompt).
    changed = np.asarray(tokens).copy()
    changed[2, 1] += 1
    c = model.apply(variables, image, changed, mask, dec_in)
    assert np.abs(c[2] - a[2]).max() > 1e-4


@pytest.mark.parametrize("vit_options", [
    {},
    {"vit.parallel_block": True, "vit.qk_norm": True, "vit.qkv_bias": False,
     "vit.posemb": "sincos2d", "encdec.mlp_activation": "silu"},
])
def test_scanned_and_unscanned_stacks_agree(vit_options):
    scanned_cfg = _config(**vit_options)
    unscanned_cfg = _config(scan_layers=False, **vit_options)
    model_s, vars_s = _init(scanned_cfg)
    model_u, vars_u = _init(unscanned_cfg)
    converted = {"params": params_lib.unscan(vars_s["params"])}
    # Same tree structure as a natively unscanned model, and back again.
    assert (jax.tree.structure(converted["params"]) == jax.tree.structure(vars_u["params"]))
    rescanned = params_lib.scan(converted["params"])
    jax.tree.map(np.testing.assert_array_equal, rescanned, vars_s["params"])
    image, tokens, mask, targets = _inputs()
    dec_in = shift_right(targets)
    out_s = model_s.apply(vars_s, image, tokens, mask, dec_in)
    out_u = model_u.apply(converted, image, tokens, mask, dec_in)
    np.testing.assert_allclose(out_s, out_u, atol=1e-5, rtol=0)


def test_vit22b_options_change_the_parameter_tree():
    _, variables = _init(_config(**{"vit.parallel_block": True, "vit.qk_norm": True,
                                    "vit.qkv_bias": False, "vit.posemb": "sincos2d"}))
    keys = set(params_lib.flatten(variables["params"]))
    block = "img/Transformer/encoderblock/"
    attn = block + "MultiHeadDotProductAttention_0/"
    assert not any(k.startswith(block + "LayerNorm_1") for k in keys)
    assert attn + "query_norm/scale" in keys and attn + "key_norm/scale" in keys
    assert attn + "query/bias" not in keys and attn + "out/bias" in keys
    assert "img/pos_embedding" not in keys


def test_conv_stem_matches_a_direct_convolution():
    """ViT_C stem: log2(patch) stride-2 3x3 convs, then a 1x1 embedding; same token grid as
    patchify. Checked against lax.conv_general_dilated run by hand on the same weights."""
    model, variables = _init(_config(**{"vit.stem": "conv", "vit.stem_channels": 8}))
    p = variables["params"]["img"]
    assert {k for k in p if k.startswith("stem_")} == {
        "stem_Conv_0", "stem_Conv_1", "stem_Conv_2",
        "stem_LayerNorm_0", "stem_LayerNorm_1", "stem_LayerNorm_2"}
    assert p["stem_Conv_2"]["kernel"].shape == (3, 3, 16, 32)
    assert p["embedding"]["kernel"].shape == (1, 1, 32, 64)
    image = _inputs()[0]
    x = image.astype(np.float32) / 127.5 - 1.0
    for i in range(3):
        x = jax.lax.conv_general_dilated(x, p[f"stem_Conv_{i}"]["kernel"], (2, 2), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = x + p[f"stem_Conv_{i}"]["bias"]
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        x = (x - mean) / np.sqrt(var + 1e-6) * p[f"stem_LayerNorm_{i}"]["scale"]
        x = jax.nn.gelu(x + p[f"stem_LayerNorm_{i}"]["bias"])
    tokens = x @ p["embedding"]["kernel"][0, 0] + p["embedding"]["bias"]
    _, state = model.apply(variables, image, method=lambda m, im: m.img(im),
                           mutable=["intermediates"])
    (stem,) = state["intermediates"]["img"]["patch_tokens"]
    np.testing.assert_allclose(stem, tokens.reshape(B, 64, 64), atol=1e-4)
    from rt2_jax.models import vit

    odd = vit.ViT(patch_size=12, width=8, depth=1, mlp_dim=8, num_heads=2, stem="conv")
    with pytest.raises(ValueError, match="power-of-two"):
        odd.init(jax.random.PRNGKey(0), np.zeros((1, 96, 96, 3), np.uint8))


def test_keypoint_tokens_match_a_hand_computed_spatial_softmax():
    """Keypoint head: conv net -> K score maps at half resolution -> softmax over locations ->
    expected (u, v) -> a token per keypoint, appended after the patch tokens. Checked against
    convolutions, softmax and expectation computed here with numpy on the same weights, and on
    a score map whose peak position is known."""
    from rt2_jax.models import vit

    model, variables = _init(_config(**{"vit.keypoints": 3}))
    p = variables["params"]["img"]
    image = _inputs()[0]
    x = image.astype(np.float32) / 127.5 - 1.0
    for i, (_, stride) in enumerate(vit.KEYPOINT_CHANNELS):
        x = jax.lax.conv_general_dilated(x, p[f"keypoint_Conv_{i}"]["kernel"], (stride,) * 2,
                                         "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.gelu(x + p[f"keypoint_Conv_{i}"]["bias"])
    # Scores times a learned inverse temperature per keypoint, starting at vit.keypoint_scale.
    np.testing.assert_allclose(p["keypoint_log_scale"], np.log(10.0) * np.ones(3), rtol=1e-6)
    scale = np.array([1.0, 2.0, 0.5], np.float32)
    variables = jax.tree.map(lambda a: a, variables)
    variables["params"]["img"]["keypoint_log_scale"] = np.log(scale)
    _, state = model.apply(variables, image, method=lambda m, im: m.img(im),
                           mutable=["intermediates"])
    inter = state["intermediates"]["img"]
    (logits,) = inter["keypoint_logits"]
    (uv,) = inter["keypoints"]
    want_logits = (np.asarray(x) @ p["keypoint_score"]["kernel"]
                   + p["keypoint_score"]["bias"]) * scale
    np.testing.assert_allclose(logits, want_logits, atol=1e-4)
    b, h, w, k = want_logits.shape
    assert (h, w, k) == (32, 32, 3)
    flat = np.asarray(want_logits, np.float64).reshape(b, h * w, k)
    prob = np.exp(flat - flat.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    u = (cols.ravel() + 0.5) / w * 2 - 1           # right is +u
    v = 1 - (rows.ravel() + 0.5) / h * 2           # up (the top row) is +v
    want_uv = np.stack([np.einsum("bnk,n->bk", prob, u), np.einsum("bnk,n->bk", prob, v)], -1)
    np.testing.assert_allclose(uv, want_uv, atol=1e-5)
    # A sharp peak at row 3, column 28 (top right) lands on that cell's centre.
    grid = vit.keypoint_grid(32, 32)
    np.testing.assert_allclose(grid[3 * 32 + 28], [(28.5 / 32) * 2 - 1, 1 - (3.5 / 32) * 2])
    # Tokens: the patches, then one per keypoint, all projected to d_model.
    out = model.apply(variables, image, method=lambda m, im: m.img(im))
    assert out.shape == (B, 64 + 3, 64)
    assert vit.num_tokens(model.model_config.vit, 64) == 67
    # The keypoint tokens carry the coordinates: moving a keypoint moves its token.
    assert np.abs(np.asarray(out[:, 64:]) - np.asarray(out[:1, 64:])).max() > 0
    with pytest.raises(ValueError, match="keypoint_scale"):
        _init(_config(**{"vit.keypoints": 3, "vit.keypoint_scale": 0.0}))
    # Shared coordinate map: token k = (u_k, v_k) @ W + b + id_k.
    (tokens,) = inter["keypoint_tokens"]
    np.testing.assert_allclose(
        tokens, np.asarray(uv) @ p["keypoint_coord"]["kernel"] + p["keypoint_coord"]["bias"]
        + p["keypoint_id"], atol=1e-5)


def test_keypoint_convs_set_the_head_and_its_map_resolution():
    """vit.keypoint_convs: (channels, stride) per 3x3 conv. A stride-2 first conv scores a map of
    half the image's side, as the default does; two stride-2 convs a quarter. The scores match
    the convs computed here on the same weights; the FLOP count follows the layout; a bad layout
    is refused by name."""
    from rt2_jax.models import vit
    from rt2_jax.tools import flops

    image = _inputs()[0]
    for convs, side in ((((16, 2), (8, 1)), 32), (((8, 2), (8, 2)), 16)):
        cfg = _config(**{"vit.keypoints": 2, "vit.keypoint_convs": convs})
        model, variables = _init(cfg)
        p = variables["params"]["img"]
        assert sorted(k for k in p if k.startswith("keypoint_Conv")) == [
            f"keypoint_Conv_{i}" for i in range(len(convs))]
        x = image.astype(np.float32) / 127.5 - 1.0
        for i, (channels, stride) in enumerate(convs):
            assert p[f"keypoint_Conv_{i}"]["kernel"].shape[-1] == channels
            x = jax.lax.conv_general_dilated(x, p[f"keypoint_Conv_{i}"]["kernel"], (stride,) * 2,
                                             "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.gelu(x + p[f"keypoint_Conv_{i}"]["bias"])
        _, state = model.apply(variables, image, method=lambda m, im: m.img(im),
                               mutable=["intermediates"])
        (logits,) = state["intermediates"]["img"]["keypoint_logits"]
        want = (np.asarray(x) @ p["keypoint_score"]["kernel"]
                + p["keypoint_score"]["bias"]) * 10.0
        assert logits.shape == (B, side, side, 2)
        np.testing.assert_allclose(logits, want, atol=1e-3, rtol=1e-5)
        want_flops = 0
        size, cin = 64, 3
        for channels, stride in convs:
            size = -(-size // stride)
            want_flops += 2 * size * size * 9 * cin * channels
            cin = channels
        assert vit.keypoint_conv_flops(64, convs) == want_flops
        counted = flops.vit_forward_flops(cfg.model.vit, 64, 64)["vit_keypoints"]
        assert counted == want_flops + 2 * side * side * convs[-1][0] * 2 + 2 * 2 * (2 * 64
                                                                                   + 64 * 64)
    for bad in ((), ((16, 3),), ((0, 1),), ((16, 1.5),), ((16,),)):
        with pytest.raises(ValueError, match="keypoint_convs"):
            _init(_config(**{"vit.keypoints": 2, "vit.keypoint_convs": bad}))


def test_per_keypoint_coordinate_maps_let_one_average_hold_an_offset():
    """keypoint_coord="per_keypoint": token k = (u_k, v_k) @ W_k + id_k with W_k [2, width] of
    its own, so with W_1 = -W_0 the mean of tokens 0 and 1 is (uv_0 - uv_1) @ W_0 / 2 plus the
    ids' mean: the offset a policy needs, in one attention average."""
    model, variables = _init(_config(**{"vit.keypoints": 2,
                                        "vit.keypoint_coord": "per_keypoint"}))
    p = variables["params"]["img"]
    assert p["keypoint_coord_kernel"].shape == (2, 2, 64) and "keypoint_coord" not in p
    image = _inputs()[0]
    changed = jax.tree.map(lambda a: a, variables)
    kernel = np.asarray(p["keypoint_coord_kernel"]).copy()
    kernel[1] = -kernel[0]
    changed["params"]["img"]["keypoint_coord_kernel"] = kernel
    _, state = model.apply(changed, image, method=lambda m, im: m.img(im),
                           mutable=["intermediates"])
    (uv,) = state["intermediates"]["img"]["keypoints"]
    (tokens,) = state["intermediates"]["img"]["keypoint_tokens"]
    uv = np.asarray(uv)
    want = np.einsum("bkc,kcd->bkd", uv, kernel) + np.asarray(p["keypoint_id"])[None]
    np.testing.assert_allclose(tokens, want, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(tokens).mean(1),
        (uv[:, 0] - uv[:, 1]) @ kernel[0] / 2 + np.asarray(p["keypoint_id"]).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="keypoint_coord"):
        _init(_config(**{"vit.keypoints": 2, "vit.keypoint_coord": "dense"}))


def test_keypoints_conditioned_on_the_prompt_follow_its_mean_embedding():
    """keypoint_query: scores = constant + conv features . (a linear map of the prompt's mean
    token embedding, pad excluded); zero-initialized, so training starts unconditioned."""
    config = _config(**{"vit.keypoints": 2, "vit.keypoint_query": True})
    model, variables = _init(config)
    image, tokens, mask, _ = _inputs()

    def keypoint_logits(variables, tokens):
        _, state = model.apply(variables, image, tokens, mask, method=VLM.encode,
                               mutable=["intermediates"])
        return np.asarray(state["intermediates"]["img"]["keypoint_logits"][0])

    p = variables["params"]
    assert not np.any(p["img"]["keypoint_query"]["kernel"])
    base = keypoint_logits(variables, tokens)
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 0.01, p["img"]["keypoint_query"]["kernel"].shape).astype(np.float32)
    changed = jax.tree.map(lambda x: x, variables)
    changed["params"]["img"]["keypoint_query"]["kernel"] = kernel
    got = keypoint_logits(changed, tokens)
    # The same conv features as the unconditioned logits, recomputed from the sown keypoints'
    # inputs: conditioned - unconditioned = features . W(query); check it against numpy.
    _, state = model.apply(changed, image, method=lambda m, im: m.img(im, query=jnp.zeros(
        (B, 64))), mutable=["intermediates"])
    np.testing.assert_allclose(state["intermediates"]["img"]["keypoint_logits"][0], base,
                               atol=1e-5)   # a zero query gives the unconditioned scores
    embed = np.asarray(p["encdec"]["token_embedder"]["embedding"])[tokens]
    query = (embed * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    delta = got - base
    # delta[b] = f[b] . (query[b] @ kernel): linear in the query, so scaling the kernel by 2
    # doubles it, and prompts differing only in padding give the same scores.
    doubled = jax.tree.map(lambda x: x, changed)
    doubled["params"]["img"]["keypoint_query"]["kernel"] = 2 * kernel
    np.testing.assert_allclose(keypoint_logits(doubled, tokens) - base, 2 * delta, atol=1e-4)
    assert np.abs(delta).max() > 1e-3
    padded_noise = np.where(mask, tokens, rng.integers(3, 1000, tokens.shape)).astype(np.int32)
    np.testing.assert_allclose(keypoint_logits(changed, padded_noise), got, atol=1e-5)
    # The VLM's query is exactly the masked mean embedding computed here.
    _, state = model.apply(changed, image, method=lambda m, im: m.img(im, query=jnp.asarray(
        query, jnp.float32)), mutable=["intermediates"])
    np.testing.assert_allclose(state["intermediates"]["img"]["keypoint_logits"][0], got,
                               atol=1e-4)
    with pytest.raises(ValueError, match="keypoint_query"):
        model.apply(variables, image, method=lambda m, im: m.img(im))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4), seed=st.integers(0, 99),
       scale=st.sampled_from([0.0, 0.5, 3.0]))
def test_prompt_query_is_a_masked_softmax_weighted_mean(lengths, seed, scale):
    """vlm.prompt_query against a float64 numpy reference: weights softmax(embedding . score)
    over the real tokens only; pads (whatever they hold) never count; a zero score is the plain
    mean; a prompt with no real token gives zeros."""
    from rt2_jax.models.vlm import prompt_query

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), 6, 5))
    mask = np.arange(6)[None, :] < np.asarray(lengths)[:, None]
    score = scale * rng.normal(size=5)
    want = np.zeros((len(lengths), 5))
    for b, n in enumerate(lengths):
        if n:
            logits = x[b, :n] @ score
            w = np.exp(logits - logits.max())
            want[b] = (w / w.sum()) @ x[b, :n]
    got = np.asarray(prompt_query(jnp.asarray(x, jnp.float32), jnp.asarray(mask),
                                  jnp.asarray(score, jnp.float32)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    mean = np.asarray(prompt_query(jnp.asarray(x, jnp.float32), jnp.asarray(mask)))
    np.testing.assert_allclose(mean, [x[b, :n].mean(0) if n else np.zeros(5)
                                      for b, n in enumerate(lengths)], atol=1e-5)
    if scale == 0.0:
        np.testing.assert_allclose(got, mean, atol=1e-6)


def test_keypoint_query_attention_starts_at_the_mean_and_learns_a_weighting():
    """vit.keypoint_query_attention: one zero-initialized score vector; at initialization the
    model computes exactly what keypoint_query alone does, with a score it weights the words."""
    plain = _config(**{"vit.keypoints": 2, "vit.keypoint_query": True})
    config = _config(**{"vit.keypoints": 2, "vit.keypoint_query": True,
                        "vit.keypoint_query_attention": True})
    model, variables = _init(config)
    score = variables["params"]["keypoint_query_score"]
    assert score.shape == (config.model.encdec.d_model,) and not np.any(score)
    image, tokens, mask, targets = _inputs()
    p = jax.tree.map(lambda x: x, variables)
    p["params"]["img"]["keypoint_query"]["kernel"] = np.random.default_rng(0).normal(
        0, 0.01, p["params"]["img"]["keypoint_query"]["kernel"].shape).astype(np.float32)
    without = {"params": {k: v for k, v in p["params"].items() if k != "keypoint_query_score"}}
    dec_in = shift_right(targets)
    np.testing.assert_allclose(model.apply(p, image, tokens, mask, dec_in),
                               VLM.from_config(plain).apply(without, image, tokens, mask, dec_in),
                               atol=1e-5)

    def keypoint_logits(variables):
        _, state = model.apply(variables, image, tokens, mask, method=VLM.encode,
                               mutable=["intermediates"])
        return np.asarray(state["intermediates"]["img"]["keypoint_logits"][0])

    weighted = jax.tree.map(lambda x: x, p)
    weighted["params"]["keypoint_query_score"] = np.random.default_rng(1).normal(
        0, 1.0, score.shape).astype(np.float32)
    assert np.abs(keypoint_logits(weighted) - keypoint_logits(p)).max() > 1e-4
    with pytest.raises(ValueError, match="keypoint_query=True"):
        _init(_config(**{"vit.keypoints": 2, "vit.keypoint_query_attention": True}))


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=3), seed=st.integers(0, 99),
       keypoints=st.integers(1, 3))
def test_per_keypoint_prompt_queries_are_one_weighting_each(lengths, seed, keypoints):
    """prompt_query with a score per keypoint [K, D]: query k is the single-score query of
    score k (the second code path, itself checked against numpy above)."""
    from rt2_jax.models.vlm import prompt_query

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(len(lengths), 6, 5)), jnp.float32)
    mask = jnp.asarray(np.arange(6)[None, :] < np.asarray(lengths)[:, None])
    scores = jnp.asarray(rng.normal(size=(keypoints, 5)), jnp.float32)
    got = np.asarray(prompt_query(x, mask, scores))
    assert got.shape == (len(lengths), keypoints, 5)
    for k in range(keypoints):
        np.testing.assert_allclose(got[:, k], prompt_query(x, mask, scores[k]), atol=1e-6)


def test_per_keypoint_query_attention_starts_at_the_shared_one_and_separates_keypoints():
    """vit.keypoint_query_per_keypoint: a zero score per keypoint [K, D]; at initialization the
    model computes what one shared (zero) weighting does; keypoint k's score map then depends
    on its own query only (ViT with per-keypoint queries [B, K, Q] against [B, Q] queries)."""
    opts = {"vit.keypoints": 3, "vit.keypoint_query": True,
             "vit.keypoint_query_attention": True, "vit.keypoint_action_head": True}
    shared = _config(**opts)
    config = _config(**opts, **{"vit.keypoint_query_per_keypoint": True})
    model, variables = _init(config)
    score = variables["params"]["keypoint_query_score"]
    assert score.shape == (3, config.model.encdec.d_model) and not np.any(score)
    image, tokens, mask, targets = _inputs()
    p = jax.tree.map(lambda x: x, variables)
    kernel = p["params"]["img"]["keypoint_query"]["kernel"]
    p["params"]["img"]["keypoint_query"]["kernel"] = np.random.default_rng(0).normal(
        0, 0.01, kernel.shape).astype(np.float32)
    one = jax.tree.map(lambda x: x, p)
    one["params"]["keypoint_query_score"] = np.zeros(score.shape[1:], np.float32)
    dec_in = shift_right(targets)
    np.testing.assert_allclose(model.apply(p, image, tokens, mask, dec_in),
                               VLM.from_config(shared).apply(one, image, tokens, mask, dec_in),
                               atol=1e-5)

    def logits_of(query):
        _, state = model.apply(p, image, method=lambda m, im: m.img(im, query=query),
                               mutable=["intermediates"])
        return np.asarray(state["intermediates"]["img"]["keypoint_logits"][0])

    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(image.shape[0], kernel.shape[0])), jnp.float32)
    per = jnp.repeat(q[:, None], 3, axis=1)
    np.testing.assert_allclose(logits_of(per), logits_of(q), atol=1e-5)
    moved = per.at[:, 1].set(jnp.asarray(rng.normal(size=q.shape), jnp.float32))
    a, b = logits_of(per), logits_of(moved)
    np.testing.assert_allclose(a[..., [0, 2]], b[..., [0, 2]], atol=1e-6)
    assert np.abs(a[..., 1] - b[..., 1]).max() > 1e-4
    with pytest.raises(ValueError, match="keypoint_query_attention=True"):
        _init(_config(**{"vit.keypoints": 2, "vit.keypoint_query": True,
                         "vit.keypoint_query_per_keypoint": True}))


def test_remat_gives_same_loss_and_grads():
    model_a, variables = _init(tiny.get_config())
    model_b = VLM.from_config(_config(remat_policy="nothing_saveable"))
    image, tokens, mask, targets = _inputs()
    dec_in = shift_right(targets)

    def loss(model, params):
        logits = model.apply({"params": params}, image, tokens, mask, dec_in)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    la, ga = jax.value_and_grad(lambda p: loss(model_a, p))(variables["params"])
    lb, gb = jax.value_and_grad(lambda p: loss(model_b, p))(variables["params"])
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), ga, gb)


def test_bf16_compute_close_to_f32(tiny_model):
    model, variables = tiny_model
    model_bf16 = VLM.from_config(_config(dtype="bfloat16"))
    image, tokens, mask, targets = _inputs()
    dec_in = shift_right(targets)
    ref = np.asarray(model.apply(variables, image, tokens, mask, dec_in), np.float64)
    out = model_bf16.apply(variables, image, tokens, mask, dec_in)
    assert out.dtype == jnp.float32  # logits come back in f32 for the loss
    rel = np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref)
    assert rel < 1e-2, rel


def test_every_parameter_has_logical_axis_names():
    model = VLM.from_config(_config(**{"vit.qk_norm": True, "vit.keypoints": 2}))
    image, tokens, mask, targets = _inputs()
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image, tokens, mask,
                                              targets))["params"]
    flat = flax.traverse_util.flatten_dict(
        boxed, is_leaf=lambda _, x: isinstance(x, flax.linen.LogicallyPartitioned))
    assert flat
    for name, leaf in flat.items():
        assert isinstance(leaf, flax.linen.LogicallyPartitioned), name
        assert len(leaf.names) == leaf.value.ndim, (name, leaf.names)
        assert set(leaf.names) <= ALLOWED_AXES, (name, leaf.names)
        if "encoderblock" in name or "layers" in name:
            assert leaf.names[0] == "layers", (name, leaf.names)


@pytest.mark.parametrize("config_module,low,high", [
    (palix_55b, 50e9, 60e9),
    (palix_5b, 4e9, 6e9),
])
def test_parameter_counts_of_the_big_configs(config_module, low, high):
    counts = param_count.count_by_component(param_count.abstract_params(config_module.get_config()))
    assert low <= counts["total"] <= high, counts
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert all(counts[k] > 0 for k in ("vit", "projection", "encoder", "decoder", "embeddings"))


def test_bad_inputs_are_clear_errors(tiny_model):
    model, variables = tiny_model
    image, tokens, mask, targets = _inputs()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model.apply(variables, image[:, :60, :60], tokens, mask, targets)
    with pytest.raises(ValueError, match="same shape"):
        model.apply(variables, image, tokens, mask[:, :5], targets)
