"""The decoder-only (prefix-LM) backbone: cache vs. full forward, attention pattern, padding,
scan, parameter names, constrained decoding, and a training run evaluated in closed loop."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny_decoder
from rt2_jax import actions, decoding, tokenizer, train_state
from rt2_jax.models import decoder_only
from rt2_jax.models import params as params_lib
from rt2_jax.models.vlm import VLM

B = 3
TARGET = 9   # start token + 8 action ids


@pytest.fixture(scope="module")
def tiny():
    """The tiny decoder-only model, its parameters and a batch whose prompts have different
    lengths (so padding sits at different places in every row)."""
    config = tiny_decoder.get_config()
    model = VLM.from_config(config)
    rng = np.random.default_rng(0)
    params = _random_params(model, config, rng)
    le = config.max_prompt_len
    lengths = np.array([5, 17, le])
    mask = np.arange(le)[None] < lengths[:, None]
    tokens = np.where(mask, rng.integers(2, 1000, (B, le)), 0).astype(np.int32)
    target = rng.integers(2, 1000, (B, TARGET)).astype(np.int32)
    target[:, 0] = 0
    image = rng.integers(0, 256, (B, 64, 64, 3), dtype=np.uint8)
    apply = jax.jit(lambda p, i, t, m, d: model.apply({"params": p}, i, t, m, d))

    def all_positions(module, image, tokens, mask, target):
        prefix, prefix_mask = module.encode(image, tokens, mask)
        return module.llm.forward(prefix, prefix_mask, target, all_positions=True)

    apply_all = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=all_positions))
    return dict(config=config, model=model, params=params, image=image, tokens=tokens,
                mask=mask, target=target, apply=apply, apply_all=apply_all)


def _random_params(model, config, rng):
    """Parameters drawn with numpy from the shapes jax.eval_shape gives (no XLA compile).
    Norm scales are not 0, so that a wrong (1 + scale) convention would show."""
    args, kwargs = train_state.init_inputs(config)
    shapes = jax.eval_shape(lambda a, k: model.init(jax.random.PRNGKey(0), *a, **k),
                            args, kwargs)["params"]
    return jax.tree.map(lambda leaf: (rng.standard_normal(leaf.shape) * 0.2).astype(np.float32),
                        params_lib.unbox(shapes))


def _all_position_logits(s, tokens, mask, target):
    """Logits of every position of [image, prompt, target] (prefix positions included)."""
    return np.asarray(s["apply_all"](s["params"], s["image"], tokens, mask, target))


def test_param_tree_has_big_vision_gemma_names_shapes_and_axes(tiny):
    c = tiny["config"].model
    d, n, k, h, f, depth = (c.llm.width, c.llm.num_heads, c.llm.num_kv_heads, c.llm.head_dim,
                            c.llm.mlp_dim, c.llm.depth)
    flat = params_lib.flatten(tiny["params"])
    expected = {
        "llm/embedder/input_embedding": (c.vocab_size, d),
        "llm/layers/pre_attention_norm/scale": (depth, d),
        "llm/layers/attn/q_einsum/w": (depth, n, d, h),
        "llm/layers/attn/kv_einsum/w": (depth, 2, k, d, h),
        "llm/layers/attn/attn_vec_einsum/w": (depth, n, h, d),
        "llm/layers/pre_ffw_norm/scale": (depth, d),
        "llm/layers/mlp/gating_einsum": (depth, 2, d, f),
        "llm/layers/mlp/linear": (depth, f, d),
        "llm/final_norm/scale": (d,),
    }
    assert {key: v.shape for key, v in flat.items() if key.startswith("llm/")} == expected
    assert flat["img/head/kernel"].shape == (c.vit.width, d)   # image tokens -> LM width
    assert not any(key.startswith("encdec/") for key in flat)
    boxed = jax.eval_shape(lambda: tiny["model"].init(
        jax.random.PRNGKey(0), tiny["image"], tiny["tokens"], tiny["mask"], tiny["target"]))
    names = {"/".join(key): leaf.names for key, leaf in flax.traverse_util.flatten_dict(
        boxed["params"], is_leaf=lambda _, x: isinstance(x, flax.linen.LogicallyPartitioned)
    ).items()}
    assert names["llm/layers/attn/kv_einsum/w"] == ("layers", None, "kv_heads", "embed", "kv")
    assert names["llm/layers/attn/q_einsum/w"] == ("layers", "heads", "embed", "kv")
    assert names["llm/embedder/input_embedding"] == ("vocab", "embed")
    assert names["llm/layers/mlp/gating_einsum"] == ("layers", None, "embed", "mlp")


@pytest.mark.parametrize("name,low,high", [("palme_12b", 11e9, 13.5e9),
                                           ("paligemma_3b", 2.7e9, 3.3e9)])
def test_big_decoder_only_configs(name, low, high):
    import importlib

    from rt2_jax.tools import flops, param_count

    config = importlib.import_module(f"configs.{name}").get_config()
    counts = param_count.count_by_component(param_count.abstract_params(config))
    assert low <= counts["total"] <= high, counts
    assert "encoder" not in counts and all(v > 0 for v in counts.values())
    assert config.actions.mapping == "least_frequent"
    weights = {k: v.weight for k, v in config.data.sources.items()}
    if name == "palme_12b":   # RT-2-PaLM-E's mixture: about two thirds robot data
        assert weights["robot"] / sum(weights.values()) == pytest.approx(0.66)
    train = flops.train_flops(config, 256)
    assert train["decoder_matmul"] > train["logits"] > 0 and "encoder_matmul" not in train


def test_cached_decoding_equals_the_full_forward(tiny):
    s = tiny
    full = np.asarray(s["apply"](s["params"], s["image"], s["tokens"], s["mask"], s["target"]))
    model, params = s["model"], {"params": s["params"]}
    logits, state = jax.jit(lambda p, i, t, m, d: model.apply(
        p, i, t, m, d, TARGET, method=VLM.prefill))(
        params, s["image"], s["tokens"], s["mask"], s["target"][:, :1])
    assert isinstance(state, decoder_only.PrefixDecodeState)
    step = jax.jit(lambda p, st, tok: model.apply(p, st, tok, method=VLM.decode_step))
    steps = [np.asarray(logits[:, 0])]
    for t in range(1, TARGET):
        out, state = step(params, state, jnp.asarray(s["target"][:, t]))
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-5, rtol=0)
    assert int(state.index) == full.shape[1] + decoder_only_prefix_len(s)


def decoder_only_prefix_len(s) -> int:
    return 64 + s["config"].max_prompt_len   # 64 image tokens + the padded prompt


def test_target_is_causal_and_the_prefix_sees_itself_in_full(tiny):
    s = tiny
    p = decoder_only_prefix_len(s)
    base = _all_position_logits(s, s["tokens"], s["mask"], s["target"])
    # A later target token changes nothing before it, prefix included, and its own position.
    target = s["target"].copy()
    target[:, 5] = (target[:, 5] + 7) % 1000 + 2
    changed = _all_position_logits(s, s["tokens"], s["mask"], target)
    np.testing.assert_array_equal(changed[:, :p + 5], base[:, :p + 5])
    assert np.abs(changed[:, p + 5:] - base[:, p + 5:]).max(axis=(1, 2)).min() > 1e-3
    # The last real prompt token reaches the first image token (bidirectional prefix), and
    # the prefix does not see the target (above).
    tokens = s["tokens"].copy()
    last = s["mask"].sum(1) - 1
    tokens[np.arange(B), last] = (tokens[np.arange(B), last] + 11) % 1000 + 2
    changed = _all_position_logits(s, tokens, s["mask"], s["target"])
    assert np.abs(changed[:, 0] - base[:, 0]).max(axis=1).min() > 1e-4


def test_prompt_padding_does_not_change_the_output(tiny):
    """Whatever the padded slots hold and however many there are, the logits are the same:
    padded keys are masked and take no RoPE position."""
    s = tiny
    ref = np.asarray(s["apply"](s["params"], s["image"], s["tokens"], s["mask"], s["target"]))
    junk = np.where(s["mask"], s["tokens"], 999).astype(np.int32)
    wider_tokens = np.concatenate([junk, np.full((B, 8), 5, np.int32)], axis=1)
    wider_mask = np.concatenate([s["mask"], np.zeros((B, 8), bool)], axis=1)
    wider = np.asarray(s["apply"](s["params"], s["image"], wider_tokens, wider_mask,
                                  s["target"]))
    np.testing.assert_allclose(wider, ref, atol=2e-5, rtol=0)


def test_scanned_equals_unscanned(tiny):
    s = tiny
    config = tiny_decoder.get_config()
    config.model.scan_layers = False
    unscanned = VLM.from_config(config)
    params = params_lib.unscan(s["params"])
    assert "layers_3" in params["llm"] and "layers" not in params["llm"]
    out = jax.jit(lambda p, *a: unscanned.apply({"params": p}, *a))(
        params, s["image"], s["tokens"], s["mask"], s["target"])
    ref = s["apply"](s["params"], s["image"], s["tokens"], s["mask"], s["target"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=0)


def test_bad_head_counts_are_clear_errors(tiny):
    config = tiny_decoder.get_config()
    config.model.llm.num_kv_heads = 3
    with pytest.raises(ValueError, match=r"multiple of llm\.num_kv_heads"):
        VLM.from_config(config).init(jax.random.PRNGKey(0), tiny["image"], tiny["tokens"],
                                     tiny["mask"], tiny["target"])
    config.model.llm.num_kv_heads = 1
    config.model.backbone = "decoder"
    with pytest.raises(ValueError, match="backbone"):
        VLM.from_config(config).init(jax.random.PRNGKey(0), tiny["image"], tiny["tokens"],
                                     tiny["mask"], tiny["target"])


def test_constrained_decoding_only_produces_action_tokens(tiny):
    """Random weights and a bias that favours every non-action id (and, at the terminate
    position, the bins): the decode loop still writes only valid action ids, while the same
    bias without the masks makes it write invalid ones."""
    s = tiny
    vocab = s["config"].model.vocab_size
    act_tok = actions.ActionTokenizer(
        actions.ActionBounds.from_stats(None, "fixed", [-1.0] * 7, [1.0] * 7),
        tokenizer.Tokenizer(), "integers")
    bias = np.full(vocab, 2e4, np.float32)
    bias[act_tok.action_ids] = 1e4
    bias[act_tok.terminate_ids] = 0.0
    spec = decoding.Decoder(s["model"], act_tok, vocab, logit_bias=bias).spec("action")
    rows = 32
    image, tokens, mask = (np.resize(x, (rows, *x.shape[1:]))
                           for x in (s["image"], s["tokens"], s["mask"]))
    params = {"params": s["params"]}
    # Sampled at a high temperature on the action-ids path (greedy decoding of the same path
    # runs in the closed-loop test below); the full-vocabulary path is the unmasked run's.
    out = jax.jit(lambda p, i, t, m, r: decoding.decode_loop(
        s["model"], spec, decoding.Sampling(5.0), p, i, t, m, r))(
        params, image, tokens, mask, jax.random.PRNGKey(1))
    ids = np.asarray(out["action_ids"])
    assert np.isin(ids[:, 0], act_tok.terminate_ids).all()
    assert np.isin(ids[:, 1:], act_tok.action_ids).all()
    assert len(np.unique(ids[:, 1:])) > 8   # sampled, not one favoured bin everywhere
    unmasked = dataclasses.replace(spec, output_ids=None,
                                   position_masks=np.ones_like(spec.position_masks))
    free = jax.jit(lambda p, i, t, m, r: decoding.decode_loop(
        s["model"], unmasked, decoding.Sampling(), p, i, t, m, r))(
        params, image[:4], tokens[:4], mask[:4], jax.random.PRNGKey(0))
    assert not np.isin(np.asarray(free["action_ids"]), act_tok.action_ids).all()  # can fail


def test_train_steps_then_closed_loop_evaluation_of_the_export(tiny, tmp_path):
    """The trainer's jitted step on the tiny decoder-only config (robot rows of toy-world
    actions), its parameters exported, and the exported policy driving the simulator through
    eval_sim. (`python -m rt2_jax.train --config=configs/tiny_decoder.py` runs the same step on
    the toy world's data.)"""
    from rt2_jax import checkpoints, preprocessing, sim
    from rt2_jax import policy as policy_lib
    from rt2_jax.tools import eval_sim

    c = tiny_decoder.get_config()
    c.data.global_batch_size, c.max_target_len = 4, 16
    setup = train_state.make_setup(c)
    tok = tokenizer.Tokenizer()
    bounds = actions.ActionBounds(tuple(sim.ACTION_LOW[1:]), tuple(sim.ACTION_HIGH[1:]))
    act_tok = actions.ActionTokenizer(bounds, tok, c.actions.mapping)
    tables = train_state.ActionTables.build(act_tok, c.model.vocab_size)
    step = train_state.make_train_step(setup, tables, num_sources=len(c.data.sources))
    rng = np.random.default_rng(1)
    raw = rng.uniform(sim.ACTION_LOW, sim.ACTION_HIGH, (4, 8)).astype(np.float32)
    raw[:, 0] = 0.0
    targets = np.zeros((4, c.max_target_len), np.int32)
    for row, action in enumerate(raw):
        ids = act_tok.target_token_ids(action)
        targets[row, :len(ids)] = ids
    prompts, prompt_mask = preprocessing.encode_robot_prompts(
        tok, ["pick up the red block", "push the ball left", "grab the star", "go"],
        c.max_prompt_len)
    batch = dict(image=tiny["image"][[0, 1, 2, 0]], encoder_tokens=prompts,
                 encoder_mask=prompt_mask, decoder_tokens=targets,
                 decoder_loss_mask=(targets > 0).astype(np.float32),
                 source=np.zeros(4, np.int32), is_robot=np.ones(4, bool),
                 action=np.zeros((4, 8), np.float32))
    # The module's random parameters (no compile of the initializer); the optimizer's own init.
    params = jax.tree.map(jnp.asarray, tiny["params"])
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                   opt_state=setup.tx.init(params), rng=jax.random.PRNGKey(0))
    # Placed as the step returns it, so that the second step reuses the first one's compile.
    state = jax.device_put(state, setup.state_sharding)
    losses = []
    for _ in range(4):
        state, sums = step(state, batch)
        losses.append(float(sums["loss_sum"] / sums["token_count"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    out = str(tmp_path / "export")
    checkpoints.export(out, state.params, c, tok.model_path, None, bounds)
    policy = policy_lib.Policy.from_export(out)
    assert policy.model.is_decoder_only
    result = eval_sim.evaluate(policy, episodes=2, seed=0, batch_size=2, max_episode_steps=2,
                               log=None)
    assert result["num_episodes"] == 2
    assert all(1 <= r["steps"] <= 2 for r in result["episodes"])
    assert 0.0 <= result["success_rate"] <= 1.0
