"""Action tokenizer: bounds, binning round trips, text form, both token mappings, masks."""

import json

import numpy as np
import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rt2_jax import actions, tokenizer

SETTINGS = settings(max_examples=80, deadline=None)
NUM_CONTINUOUS = actions.NUM_CONTINUOUS


@pytest.fixture(scope="module")
def tok():
    return tokenizer.Tokenizer()


@pytest.fixture(scope="module", params=actions.MAPPINGS)
def action_tok(request, tok):
    bounds = actions.ActionBounds((-1.0,) * 7, (1.0,) * 7)
    return actions.ActionTokenizer(bounds, tok, request.param)


@pytest.fixture(scope="module")
def integers_tok(tok):
    bounds = actions.ActionBounds((-1.0,) * 7, (1.0,) * 7)
    return actions.ActionTokenizer(bounds, tok, "integers")


# ---- bounds -----------------------------------------------------------------------------------

finite = st.floats(-100, 100, allow_nan=False)
widths = st.one_of(st.just(0.0), st.floats(1e-9, 1e-3), st.floats(1e-3, 200))


@st.composite
def bounds_strategy(draw):
    low = np.array(draw(st.lists(finite, min_size=7, max_size=7)))
    width = np.array(draw(st.lists(widths, min_size=7, max_size=7)))
    return actions.ActionBounds(tuple(low), tuple(low + width))


def _action_tokenizer(tok, bounds):
    return actions.ActionTokenizer(bounds, tok, "integers")  # binning ignores the mapping


STATS = {
    "mean": [0.0] * 7, "std": [1.0] * 7,
    "min": [-3.0, -3, -3, -3, -3, -3, 0], "max": [3.0, 3, 3, 3, 3, 3, 1],
    "q01": [-1.0, -2, -1, -1, -1, -1, 0], "q99": [1.0, 2, 1, 1, 1, 1, 1],
}


def test_bounds_from_stats_modes():
    bounds = actions.ActionBounds.from_stats(STATS)
    assert bounds.low == (-1.0, -2, -1, -1, -1, -1, 0) and bounds.high == (1.0, 2, 1, 1, 1, 1, 1)
    bounds = actions.ActionBounds.from_stats(STATS, "min_max")
    assert bounds.low[0] == -3.0 and bounds.high[6] == 1.0
    with_terminate = {k: [0.5, *v] for k, v in STATS.items()}
    assert actions.ActionBounds.from_stats(with_terminate) == actions.ActionBounds.from_stats(STATS)
    fixed = actions.ActionBounds.from_stats(None, "fixed", [-1.0] * 7, [1.0] * 7)
    assert fixed == actions.ActionBounds((-1.0,) * 7, (1.0,) * 7)


@pytest.mark.parametrize("call, message", [
    (lambda: actions.ActionBounds.from_stats(STATS, "median"), "unknown bound mode 'median'"),
    (lambda: actions.ActionBounds.from_stats({"min": [0] * 7}), "lack key 'q01'"),
    (lambda: actions.ActionBounds.from_stats(None, "fixed"), "needs fixed_low and fixed_high"),
    (lambda: actions.ActionBounds.from_stats({"q01": [0] * 6, "q99": [1] * 6}), "shape"),
    (lambda: actions.ActionBounds((0.0,) * 7, (1.0, 1, 1, float("nan"), 1, 1, 1)),
     "non-finite entries at indices \\[3\\]"),
    (lambda: actions.ActionBounds((0.0,) * 7, (1.0, -1, 1, 1, 1, 1, 1)), "low > high for dy"),
    (lambda: actions.ActionBounds((0.0,) * 8, (1.0,) * 8), "shape \\(7,\\)"),
    (lambda: actions.ActionBounds.from_json_dict({"low": [0] * 7}), "'low' and 'high'"),
])
def test_bad_bounds_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@SETTINGS
@given(bounds_strategy())
def test_bounds_json_round_trip(bounds):
    data = json.loads(json.dumps(bounds.to_json_dict()))
    assert actions.ActionBounds.from_json_dict(data) == bounds
    assert data["dims"] == list(actions.CONTINUOUS_DIMS)


def test_degenerate_bounds_are_widened_minimally():
    bounds = actions.ActionBounds((0.0, 5.0, 0, 0, 0, 0, 0), (0.0, 5.0, 1, 1, 1, 1, 1))
    low, high = bounds.limits()
    assert high[0] - low[0] == pytest.approx(actions.MIN_BOUND_WIDTH)
    assert (low[0] + high[0]) / 2 == 0.0
    assert high[1] - low[1] == pytest.approx(5 * actions.MIN_BOUND_WIDTH)
    assert (low[2:], high[2:]) == (pytest.approx([0] * 5), pytest.approx([1] * 5))
    assert np.all(np.isfinite(bounds.bin_width())) and np.all(bounds.bin_width() > 0)


# ---- binning ----------------------------------------------------------------------------------


@SETTINGS
@given(bounds_strategy(), hnp.arrays(np.float64, (5, 7), elements=st.floats(0, 1)),
       st.lists(st.sampled_from([0.0, 1.0, 0.2, 0.8]), min_size=5, max_size=5))
def test_round_trip_inside_bounds_within_half_a_bin(tok, bounds, fractions, terminate):
    action_tok = _action_tokenizer(tok, bounds)
    low, high = np.array(bounds.low), np.array(bounds.high)
    continuous = np.clip(low + fractions * (high - low), low, high)
    action = np.concatenate([np.array(terminate)[:, None], continuous], axis=1)
    bins = action_tok.encode(action)
    assert bins.shape == (5, 8) and bins.dtype == np.int32
    assert ((bins[:, 1:] >= 0) & (bins[:, 1:] < 256)).all()
    assert bins[:, 0].tolist() == [int(t >= 0.5) for t in terminate]
    decoded = action_tok.decode(bins)
    assert decoded.dtype == np.float32 and decoded.shape == (5, 8)
    float32_slack = np.spacing(np.float32(np.maximum(np.abs(low), np.abs(high)) + 1))
    error = np.abs(decoded[:, 1:].astype(np.float64) - continuous)
    assert (error <= bounds.bin_width() / 2 * (1 + 1e-9) + float32_slack).all()
    assert action_tok.num_clipped == 0


@SETTINGS
@given(bounds_strategy(), hnp.arrays(np.float64, (4, 7), elements=st.floats(1e-6, 1e6)),
       hnp.arrays(np.bool_, (4, 7)))
def test_out_of_bounds_values_clip_to_the_bound_bin_and_are_counted(tok, bounds, excess, above):
    action_tok = _action_tokenizer(tok, bounds)
    low, high = bounds.limits()
    continuous = np.where(above, high + excess, low - excess)
    action = np.concatenate([np.zeros((4, 1)), continuous], axis=1)
    bins = action_tok.encode(action)
    assert (bins[:, 1:] == np.where(above, 255, 0)).all()
    assert action_tok.num_clipped == 28
    assert action_tok.num_clipped_per_dim.tolist() == [4] * 7
    bound_action = np.concatenate([np.zeros((4, 1)), np.where(above, high, low)], axis=1)
    assert (action_tok.decode(action_tok.encode(bound_action)) == action_tok.decode(bins)).all()
    assert action_tok.num_encoded == 8


@SETTINGS
@given(bounds_strategy())
def test_all_256_bins_reachable_and_distinct(tok, bounds):
    action_tok = _action_tokenizer(tok, bounds)
    centres = action_tok.bin_centres()
    assert centres.shape == (7, 256)
    assert (np.diff(centres, axis=1) > 0).all()  # 256 distinct, increasing float32 values
    grid = np.repeat(np.arange(256)[:, None], 8, axis=1)
    grid[:, 0] = np.arange(256) % 2
    decoded = action_tok.decode(grid)
    assert (decoded[:, 1:].T == centres).all()
    assert (action_tok.encode(decoded) == grid).all()  # each centre encodes back to its bin


def test_encode_handles_batch_dims_and_bad_values(action_tok):
    action = np.zeros((2, 3, 8), dtype=np.float32)
    assert action_tok.encode(action).shape == (2, 3, 8)
    assert action_tok.encode(np.ones(8)).tolist() == [1] + [255] * 7
    action[1, 2, 4] = np.nan
    with pytest.raises(ValueError, match="NaN at dim 'droll' of action \\(1, 2\\)"):
        action_tok.encode(action)
    with pytest.raises(ValueError, match="terminate must be in \\[0, 1\\]"):
        action_tok.encode([2, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 8\]"):
        action_tok.encode(np.zeros(7))


# ---- text form --------------------------------------------------------------------------------

bins_strategy = st.tuples(st.integers(0, 1), *[st.integers(0, 255)] * 7).map(np.array)


@SETTINGS
@given(bins_strategy)
def test_parse_inverts_format(bins):
    text = actions.format_action_bins(bins)
    assert len(text.split(" ")) == 8
    parsed = actions.parse_action_text(text)
    assert parsed.dtype == np.int32 and (parsed == bins).all()


def test_format_matches_the_paper_example():
    bins = np.array([1, 128, 91, 241, 5, 101, 127, 217])
    assert actions.format_action_bins(bins) == "1 128 91 241 5 101 127 217"
    assert (actions.parse_action_text(" 1 128 91 241 5 101 127 217\n") == bins).all()


@pytest.mark.parametrize("text, message", [
    ("1 128 91 241 5 101 127", "8 space-separated integers .*got 7"),
    ("1 128 91 241 5 101 127 217 3", "got 9"),
    ("", "got 0"),
    ("1 128 91 241 5 1.5 127 217", "field 5 \\(dpitch\\) is '1.5'"),
    ("1 128 91 241 5 -1 127 217", "field 5 \\(dpitch\\) is '-1'"),
    ("1 128 91 241 5 07 127 217", "leading zeros"),
    ("1 128  91 241 5 101 127 217", "separated by single spaces"),
    ("1 128 91 241 5 101 127 217 ", None),
    ("1 128 91 256 5 101 127 217", "bin 256 for dim 'dz' is out of range"),
    ("2 128 91 241 5 101 127 217", "bin 2 for dim 'terminate' .*0 or 1"),
])
def test_parse_rejects_bad_text(text, message):
    if message is None:  # outer whitespace is fine
        assert actions.parse_action_text(text).shape == (8,)
        return
    with pytest.raises(ValueError, match=message):
        actions.parse_action_text(text)


def test_format_rejects_bad_bins():
    with pytest.raises(ValueError, match="must be integers"):
        actions.format_action_bins(np.zeros(8))
    with pytest.raises(ValueError, match="one action"):
        actions.format_action_bins(np.zeros((2, 8), dtype=int))


# ---- token mappings ---------------------------------------------------------------------------


def test_action_ids_unique_and_disjoint_from_specials(action_tok, tok):
    ids = action_tok.action_ids
    assert ids.shape == (256,) and len(set(ids.tolist())) == 256
    assert not {tok.pad_id, tok.eos_id, tok.unk_id} & set(ids.tolist())
    assert (ids < tok.vocab_size).all()
    assert action_tok.terminate_ids.tolist() == ids[:2].tolist()
    assert not ids.flags.writeable


def test_integers_mapping_uses_number_pieces(integers_tok, tok):
    pieces = [tok.id_to_piece(i) for i in integers_tok.action_ids]
    assert pieces == [f"▁{n}" for n in range(256)]


@SETTINGS
@given(bins_strategy)
def test_action_text_tokenizes_to_exactly_the_8_action_ids(integers_tok, tok, bins):
    ids = tok.encode(actions.format_action_bins(bins))
    assert ids == integers_tok.bins_to_token_ids(bins).tolist()
    assert (integers_tok.token_ids_to_bins(np.array(ids)) == bins).all()
    assert tok.decode(ids) == actions.format_action_bins(bins)


def test_least_frequent_mapping_rules(tok):
    action_tok = actions.ActionTokenizer(actions.ActionBounds((0.0,) * 7, (1.0,) * 7), tok,
                                         "least_frequent")
    chosen = set(action_tok.action_ids.tolist())
    templates = tok.template_token_ids()
    assert templates and not chosen & templates
    for piece_id in chosen:
        piece = tok.id_to_piece(piece_id)
        assert tok.piece_types[piece_id] == tokenizer.PIECE_NORMAL, piece
        assert not any(c.isdigit() for c in piece), piece
        assert len(piece.removeprefix("▁")) >= 2, piece
    digit_pieces = {i for i in range(tok.vocab_size)
                    if any(c.isdigit() for c in tok.id_to_piece(i))}
    assert len(digit_pieces) >= 256 and not chosen & digit_pieces
    candidates = set(actions.least_frequent_candidates(tok).tolist())
    assert chosen <= candidates and len(candidates) >= 256
    unchosen = candidates - chosen
    assert max(tok.piece_score(i) for i in chosen) <= min(tok.piece_score(i) for i in unchosen)
    # Robot prompts never contain action tokens.
    prompt = tok.encode(tokenizer.robot_prompt("pick up the red ball"))
    assert not chosen & set(prompt)


def _throwaway_model(tmp_path) -> tokenizer.Tokenizer:
    """A vocabulary with single pieces for 0..9 only, and few learned pieces."""
    lines = ["pick up the red ball", "push the blue star left", "0 1 2 3 4 5 6 7 8 9",
             "place the ball on card 3"] * 40
    prefix = tmp_path / "no_numbers"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=300,
        hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, minloglevel=2,
        user_defined_symbols=[f"▁{n}" for n in range(10)], num_threads=1)
    return tokenizer.Tokenizer(f"{prefix}.model")


def test_integers_mapping_rejects_vocabulary_without_number_pieces(tmp_path):
    tok = _throwaway_model(tmp_path)
    bounds = actions.ActionBounds((0.0,) * 7, (1.0,) * 7)
    with pytest.raises(ValueError, match="number 10 encodes to 2 pieces") as info:
        actions.ActionTokenizer(bounds, tok, "integers")
    assert "least_frequent" in str(info.value)
    with pytest.raises(ValueError, match="needs 256 eligible pieces"):
        actions.ActionTokenizer(bounds, tok, "least_frequent")
    with pytest.raises(ValueError, match="unknown action token mapping 'symbols'"):
        actions.ActionTokenizer(bounds, tok, "symbols")


def test_token_ids_to_bins_rejects_non_action_ids(action_tok, tok):
    ids = action_tok.bins_to_token_ids(np.array([[1, 2, 3, 4, 5, 6, 7, 8]] * 2))
    assert (action_tok.token_ids_to_bins(ids) == [[1, 2, 3, 4, 5, 6, 7, 8]] * 2).all()
    bad = ids.copy()
    bad[1, 3] = tok.eos_id
    with pytest.raises(ValueError, match="token id 1 \\('</s>'\\) at dim 'dz' of action \\(1,\\)"):
        action_tok.token_ids_to_bins(bad)
    bad[1, 3] = 5000
    with pytest.raises(ValueError, match="outside the vocabulary"):
        action_tok.token_ids_to_bins(bad)
    not_terminate = ids[0].copy()
    not_terminate[0] = action_tok.action_ids[7]
    with pytest.raises(ValueError, match="dim 'terminate'"):
        action_tok.token_ids_to_bins(not_terminate)


def test_target_token_ids_are_8_ids_then_eos(action_tok, tok):
    action = np.array([0.0, 0.1, -0.5, 1.5, 0, 0.99, -1, 1])
    target = action_tok.target_token_ids(action)
    assert target.shape == (9,) and target.dtype == np.int32
    assert target[-1] == tok.eos_id
    assert (target[:8] == action_tok.bins_to_token_ids(action_tok.encode(action))).all()
    assert action_tok.target_token_ids(np.zeros((3, 8))).shape == (3, 9)
    decoded = action_tok.action_from_token_ids(target[:8])
    assert np.allclose(decoded, action_tok.decode(action_tok.encode(action)))


def test_chain_of_thought_ids(action_tok, tok):
    action = np.array([1.0, 0.1, -0.5, 0.3, 0, 0.99, -1, 1])
    ids = action_tok.cot_target_token_ids("pick up the red ball", action)
    assert ids[-1] == tok.eos_id
    plan, bins = action_tok.parse_cot_token_ids(np.concatenate([[tok.decoder_start_id], ids]))
    assert plan == "pick up the red ball"
    assert (bins == action_tok.encode(action)).all()
    if action_tok.mapping == "integers":
        text = tokenizer.cot_target_text("pick up the red ball",
                                         actions.format_action_bins(bins))
        assert ids.tolist() == [*tok.encode(text), tok.eos_id]


# ---- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [1024, 1100])
def test_masks_allow_exactly_the_intended_ids(action_tok, vocab_size):
    mask = action_tok.action_mask(vocab_size)
    assert mask.shape == (vocab_size,) and mask.dtype == bool
    assert set(np.flatnonzero(mask).tolist()) == set(action_tok.action_ids.tolist())
    positions = action_tok.position_masks(vocab_size)
    assert positions.shape == (8, vocab_size)
    assert set(np.flatnonzero(positions[0]).tolist()) == set(action_tok.terminate_ids.tolist())
    for row in range(1, 8):
        assert (positions[row] == mask).all()
    assert action_tok.position_masks(vocab_size) is positions  # built once
    assert not positions.flags.writeable and not mask.flags.writeable


def test_mask_smaller_than_the_vocabulary_is_rejected(action_tok):
    with pytest.raises(ValueError, match="smaller than the tokenizer's 1024 pieces"):
        action_tok.action_mask(512)


@settings(max_examples=50, deadline=None)
@given(bounds=bounds_strategy(),
       bins=hnp.arrays(np.int32, (5, 7), elements=st.integers(0, actions.NUM_BINS - 1)),
       terminate=st.integers(0, 1))
def test_normalized_from_bins_is_the_data_normalization_of_the_decoded_action(tok, bounds, bins,
                                                                              terminate):
    # The trainer's and evaluator's L1 compare normalized_from_bins with the data pipeline's
    # normalized target: decoding the bins and normalizing as the pipeline does must agree.
    full = np.concatenate([np.full((5, 1), terminate, np.int32), bins], axis=1)
    decoded = _action_tokenizer(tok, bounds).decode(full)
    low, high = bounds.limits()   # the bounds binning uses (degenerate dims widened)
    expected = np.concatenate([decoded[:, :1], (decoded[:, 1:] - low) / (high - low) * 2 - 1],
                              axis=1)
    # Within a tenth of a bin (2 / 256 in normalized units): decode() rounds to float32.
    np.testing.assert_allclose(actions.normalized_from_bins(full), expected, atol=0.1 * 2 / 256)
