"""Constrained decoding: validity under adversarial logits, cache vs. recompute, sampling, modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from rt2_jax import actions, decoding, tokenizer
from rt2_jax.models import params as params_lib
from rt2_jax.models.vlm import VLM

B = 4


@pytest.fixture(scope="module")
def setup():
    config = tiny.get_config()
    tok = tokenizer.Tokenizer()
    bounds = actions.ActionBounds.from_stats(None, "fixed", [-1.0] * 7, [1.0] * 7)
    act_tok = actions.ActionTokenizer(bounds, tok, "integers")
    model = VLM.from_config(config)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (B, 64, 64, 3), dtype=np.uint8)
    prompts = ["pick up the red block", "push the blue ball left",
               "move the green star near the white ring", "grab the black cylinder"]
    toks, mask = tok.encode_batch([tokenizer.robot_prompt(p) for p in prompts],
                                  config.max_prompt_len)
    variables = params_lib.unbox(model.init(jax.random.PRNGKey(0), image, toks, mask,
                                            np.zeros((B, 4), np.int32)))
    return dict(config=config, tok=tok, act_tok=act_tok, model=model, params=variables,
                image=image, toks=toks, mask=mask)


def _adversarial_bias(act_tok, vocab_size, strength=1e4):
    """Every non-action id hugely favoured; among action ids, the non-terminate bins (invalid at
    position 0) favoured over the terminate ids."""
    bias = np.full(vocab_size, 2 * strength, np.float32)
    bias[act_tok.action_ids] = strength
    bias[act_tok.terminate_ids] = 0.0
    return bias


@pytest.mark.parametrize("path", ["action_ids_only", "full_vocabulary"])
def test_masked_actions_are_always_valid_under_adversarial_bias(setup, path):
    """The bias acts on the scored ids in both paths: the action path that scores only the 256
    action ids (then the bias favours invalid bins at position 0) and the full-vocabulary path
    (then it also favours every text id). Greedy and high-temperature sampling."""
    import dataclasses

    s = setup
    vocab = s["config"].model.vocab_size
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab,
                           logit_bias=_adversarial_bias(s["act_tok"], vocab))
    spec = dec.spec("action")
    if path == "full_vocabulary":
        spec = dataclasses.replace(spec, output_ids=None)
    image = np.repeat(s["image"], 64, axis=0)  # 256 rows per call
    toks, mask = np.repeat(s["toks"], 64, axis=0), np.repeat(s["mask"], 64, axis=0)
    total = 0
    for seed in range(4):  # 1,024 actions: greedy once, then sampling at a high temperature
        sampling = decoding.Sampling() if seed == 0 else decoding.Sampling(temperature=5.0)
        run = jax.jit(lambda p, i, t, m, r, sampling=sampling: decoding.decode_loop(
            s["model"], spec, sampling, p, i, t, m, r))
        ids = np.asarray(run(s["params"], image, toks, mask, jax.random.PRNGKey(seed))[
            "action_ids"])
        assert ids.shape == (256, 8)
        assert np.isin(ids[:, 0], s["act_tok"].terminate_ids).all()
        assert np.isin(ids[:, 1:], s["act_tok"].action_ids).all()
        # The bias did act inside the allowed sets: positions 1..7 took favoured bins.
        assert not np.isin(ids[:, 1:], s["act_tok"].terminate_ids).all()
        action = s["act_tok"].decode(s["act_tok"].token_ids_to_bins(ids))
        assert np.isfinite(action).all() and set(np.unique(action[:, 0])) <= {0.0, 1.0}
        total += len(ids)
    assert total >= 1000
    # The bias without the masks would have produced invalid ids (the test can fail).
    free = jax.jit(lambda p, i, t, m, r: decoding.decode_loop(
        s["model"], dataclasses.replace(spec, position_masks=np.ones_like(spec.position_masks)),
        decoding.Sampling(), p, i, t, m, r))
    unmasked = np.asarray(free(s["params"], image[:8], toks[:8], mask[:8],
                               jax.random.PRNGKey(0))["action_ids"])
    assert not np.isin(unmasked[:, 0], s["act_tok"].terminate_ids).all()


def _reference_greedy(s, masks):
    """Recomputes the whole decoder (teacher forcing over the prefix) at every step."""
    model, params = s["model"], s["params"]
    start = s["tok"].decoder_start_id
    prefix = np.full((B, 1), start, np.int32)
    apply = jax.jit(lambda p: model.apply(params, s["image"], s["toks"], s["mask"], p))
    for t in range(8):
        logits = np.asarray(apply(prefix))[:, -1]
        logits = np.where(masks[t][None], logits, -np.inf)
        prefix = np.concatenate([prefix, logits.argmax(-1)[:, None].astype(np.int32)], axis=1)
    return prefix[:, 1:]


def test_cached_loop_matches_recomputing_reference(setup):
    s = setup
    vocab = s["config"].model.vocab_size
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab)
    ids = dec.actions(s["params"], s["image"], s["toks"], s["mask"])["ids"]
    np.testing.assert_array_equal(ids, _reference_greedy(s, s["act_tok"].position_masks(vocab)))


def test_sampling_is_reproducible_for_a_key(setup):
    s = setup
    dec = decoding.Decoder(s["model"], s["act_tok"], s["config"].model.vocab_size)
    sampling = decoding.Sampling(temperature=3.0, top_k=50)
    run = lambda seed: dec.actions(s["params"], s["image"], s["toks"], s["mask"],
                                   rng=jax.random.PRNGKey(seed), sampling=sampling)["ids"]
    np.testing.assert_array_equal(run(1), run(1))
    assert any(not np.array_equal(run(1), run(k)) for k in (2, 3, 4))
    with pytest.raises(ValueError, match="PRNG key"):
        dec.actions(s["params"], s["image"], s["toks"], s["mask"], sampling=sampling)


def test_top_k_one_equals_greedy(setup):
    s = setup
    dec = decoding.Decoder(s["model"], s["act_tok"], s["config"].model.vocab_size)
    greedy = dec.actions(s["params"], s["image"], s["toks"], s["mask"])["ids"]
    top1 = dec.actions(s["params"], s["image"], s["toks"], s["mask"], rng=jax.random.PRNGKey(3),
                       sampling=decoding.Sampling(temperature=1.0, top_k=1))["ids"]
    np.testing.assert_array_equal(greedy, top1)


def test_compiled_once_per_shape(setup):
    s = setup
    dec = decoding.Decoder(s["model"], s["act_tok"], s["config"].model.vocab_size)
    dec.actions(s["params"], s["image"], s["toks"], s["mask"])
    assert dec.num_compilations == 1
    dec.actions(s["params"], s["image"][::-1].copy(), s["toks"], s["mask"])
    assert dec.num_compilations == 1  # same shapes: no retrace
    dec.actions(s["params"], s["image"][:2], s["toks"][:2], s["mask"][:2])
    assert dec.num_compilations == 2  # a new batch size compiles once more


def test_chain_of_thought_output_parses(setup):
    s = setup
    vocab = s["config"].model.vocab_size
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab, max_text_len=10)
    marker = decoding.cot_marker_ids(s["tok"])
    results = dec.chain_of_thought(s["params"], s["image"], s["toks"], s["mask"])
    assert len(results) == B
    for r in results:
        ids = [int(i) for i in r["ids"] if i != s["tok"].pad_id]
        # [plan ...] [marker] [8 action ids], the action ids valid per position.
        assert ids[-8 - len(marker):-8] == marker.tolist()
        assert ids[-8] in s["act_tok"].terminate_ids.tolist()
        assert np.isin(ids[-7:], s["act_tok"].action_ids).all()
        np.testing.assert_array_equal(s["act_tok"].token_ids_to_bins(np.array(ids[-8:])),
                                      r["bins"])
        assert isinstance(r["plan"], str)


def test_chain_of_thought_stops_planning_at_a_generated_marker(setup):
    """Bias the marker's tokens so the model writes it itself: the plan ends right there."""
    s = setup
    vocab = s["config"].model.vocab_size
    marker = decoding.cot_marker_ids(s["tok"])
    bias = np.zeros(vocab, np.float32)
    bias[marker[-1]] = 1e4  # the last marker piece wins every free-text step
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab, max_text_len=10, logit_bias=bias)
    out = dec.run("cot", s["params"], s["image"], s["toks"], s["mask"])
    # With a one-piece marker, the first step matches; otherwise the marker is forced at the end.
    if len(marker) == 1:
        assert int(out["num_steps"]) == 1 + 8
    assert out["forced_marker"].tolist() == [len(marker) > 1] * B
    for row in out["tokens"]:
        ids = [int(i) for i in row if i != s["tok"].pad_id]
        assert ids[-8 - len(marker):-8] == marker.tolist()


def test_forced_marker_is_not_well_formed_even_when_it_parses(setup, monkeypatch):
    # A plan cut at the length limit can read 'Plan: ... Action:' once the loop writes the
    # marker; only what the model wrote itself counts as well formed.
    s = setup
    vocab = s["config"].model.vocab_size
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab, max_text_len=10)
    dec.spec("cot")   # builds the marker
    text = s["tok"].encode(tokenizer.cot_prefix("go left"))
    action = np.asarray(s["act_tok"].target_token_ids(np.zeros(8, np.float32))[:8], np.int32)
    row = np.array(text + action.tolist(), np.int32)
    fake = {"tokens": np.stack([row, row]), "action_ids": np.stack([action, action]),
            "num_steps": np.int32(len(row)), "forced_marker": np.array([False, True])}
    monkeypatch.setattr(dec, "run", lambda *a, **k: fake)
    got = dec.chain_of_thought(s["params"], s["image"][:2], s["toks"][:2], s["mask"][:2])
    assert [r["plan"] for r in got] == ["go left", "go left"]
    assert [r["well_formed"] for r in got] == [True, False]


def test_free_text_stops_at_eos(setup):
    s = setup
    vocab = s["config"].model.vocab_size
    bias = np.zeros(vocab, np.float32)
    bias[s["tok"].eos_id] = 1e4
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab, max_text_len=16, logit_bias=bias)
    out = dec.run("text", s["params"], s["image"], s["toks"], s["mask"])
    assert int(out["num_steps"]) == 1
    assert dec.text(s["params"], s["image"], s["toks"], s["mask"]) == [""] * B
    plain = decoding.Decoder(s["model"], s["act_tok"], vocab, max_text_len=16)
    raw = plain.run("text", s["params"], s["image"], s["toks"], s["mask"])["tokens"]
    assert raw.shape == (B, 16)
    assert (raw < s["tok"].vocab_size).all() and (raw[:, 0] != s["tok"].pad_id).all()


def test_decoding_under_a_mesh_matches_plain(setup):
    # The loop traced under the mesh's activation rules (what the AOT check lowers) decodes the
    # same actions as the plain one.
    from rt2_jax import sharding

    s = setup
    vocab = s["config"].model.vocab_size
    mesh = sharding.make_mesh(s["config"], jax.devices()[:1])
    rules = sharding.rules_from_config(s["config"])
    plain = decoding.Decoder(s["model"], s["act_tok"], vocab)
    meshed = decoding.Decoder(s["model"], s["act_tok"], vocab, mesh=mesh, rules=rules)
    args = (s["params"], s["image"], s["toks"], s["mask"])
    np.testing.assert_array_equal(plain.actions(*args)["ids"], meshed.actions(*args)["ids"])
    lowered = meshed.lower("action", *args, jax.random.PRNGKey(0))
    assert "while" in lowered.as_text()
    with pytest.raises(ValueError, match="both mesh and rules"):
        decoding.Decoder(s["model"], s["act_tok"], vocab, mesh=mesh)


def test_bad_arguments(setup):
    s = setup
    vocab = s["config"].model.vocab_size
    with pytest.raises(ValueError, match="logit_bias"):
        decoding.Decoder(s["model"], s["act_tok"], vocab, logit_bias=np.zeros(3))
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab)
    with pytest.raises(ValueError, match="decode mode"):
        dec.run("poetry", s["params"], s["image"], s["toks"], s["mask"])
    with pytest.raises(ValueError, match="temperature"):
        decoding.Sampling(temperature=-1.0)
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="terminate_threshold"):
            decoding.Sampling(terminate_threshold=bad)


def _terminate_probability(s) -> np.ndarray:
    """p(terminate) per row at action position 0, from a plain forward pass (no decode loop):
    softmax over the two terminate ids of the first decoder position's logits."""
    start = np.full((B, 1), s["tok"].decoder_start_id, np.int32)
    logits = np.asarray(s["model"].apply(s["params"], s["image"], s["toks"], s["mask"], start),
                        np.float64)[:, 0, s["act_tok"].terminate_ids]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e[:, 1] / e.sum(-1)


@pytest.mark.parametrize("path", ["action_ids_only", "full_vocabulary"])
def test_terminate_threshold_is_a_probability_cut(setup, path):
    """Greedy with threshold t says terminate exactly on the rows whose p(terminate) >= t (p
    from an independent forward pass); t = 0.5 is plain argmax; only position 0 moves (a row
    whose terminate did not flip decodes the same 8 ids)."""
    import dataclasses

    s = setup
    vocab = s["config"].model.vocab_size
    dec = decoding.Decoder(s["model"], s["act_tok"], vocab)
    spec = dec.spec("action")
    if path == "full_vocabulary":
        spec = dataclasses.replace(spec, output_ids=None)
    p = _terminate_probability(s)

    def decode(t):
        run = jax.jit(lambda *a: decoding.decode_loop(
            s["model"], spec, decoding.Sampling(terminate_threshold=t), *a))
        return np.asarray(run(s["params"], s["image"], s["toks"], s["mask"],
                              jax.random.PRNGKey(0))["action_ids"])

    plain = decode(0.5)
    np.testing.assert_array_equal(plain[:, 0] == s["act_tok"].terminate_ids[1], p >= 0.5)
    checked = 0
    for r in range(B):
        for t, says in ((p[r] * 0.97, True), (min(p[r] * 1.03, 0.999), False)):
            if not 0.0 < t < 1.0 or abs(t - p[r]) < 1e-4:
                continue
            ids = decode(float(t))
            assert (ids[r, 0] == s["act_tok"].terminate_ids[1]) == says, (r, p[r], t)
            flipped = ids[:, 0] != plain[:, 0]
            np.testing.assert_array_equal(ids[~flipped], plain[~flipped])
            checked += 1
    assert checked >= B   # the cut was exercised on both sides for most rows


def test_terminate_threshold_reweights_sampled_odds(setup):
    """Sampling at temperature 1 with threshold t multiplies each row's terminate odds by
    (1 - t) / t: the share of sampled actions that terminate matches the rate predicted from an
    independent forward pass's p(terminate), within 4 binomial standard deviations."""
    s = setup
    dec = decoding.Decoder(s["model"], s["act_tok"], s["config"].model.vocab_size)
    reps = 64
    image = np.repeat(s["image"], reps, axis=0)
    toks, mask = np.repeat(s["toks"], reps, axis=0), np.repeat(s["mask"], reps, axis=0)
    p = np.repeat(_terminate_probability(s), reps)
    rates = {}
    for t in (0.5, 0.05, 0.01, 0.999):
        ids = dec.actions(s["params"], image, toks, mask, rng=jax.random.PRNGKey(7),
                          sampling=decoding.Sampling(temperature=1.0, terminate_threshold=t))
        rate = float((ids["ids"][:, 0] == s["act_tok"].terminate_ids[1]).mean())
        k = (1 - t) / t
        q = p * k / (p * k + 1 - p)
        assert abs(rate - q.mean()) <= 4 * np.sqrt((q * (1 - q)).sum()) / len(q) + 1e-3, (t, rate)
        rates[t] = rate
    assert rates[0.999] <= rates[0.5] < rates[0.05] < rates[0.01]   # the rule moved the rate


def test_sample_token_respects_mask():
    logits = jnp.array([[5.0, 1.0, 3.0]])
    masked = jnp.where(jnp.array([[False, True, True]]), logits, decoding.NEG_INF)
    for seed in range(20):
        tok = decoding.sample_token(masked, jax.random.PRNGKey(seed), decoding.Sampling(2.0))
        assert int(tok[0]) in (1, 2)
