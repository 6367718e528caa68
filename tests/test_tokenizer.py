"""Tokenizer: special ids, load errors, round trips, batching, templates, the shipped model."""

import logging
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st

from rt2_jax import tokenizer
from rt2_jax.tools import make_tokenizer

SETTINGS = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def tok():
    return tokenizer.Tokenizer()


def _corpus_alphabet() -> str:
    chars = set()
    for line in make_tokenizer.corpus(num_lines=500):
        chars.update(line)
    return "".join(sorted(chars - {" "}))


ALPHABET = _corpus_alphabet()
WORDS = st.text(alphabet=ALPHABET, min_size=1, max_size=12)


def test_shipped_model_special_ids(tok):
    assert tok.model_path == tokenizer.default_model_path()
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.decoder_start_id) == (0, 1, 2, 0)
    assert tok.vocab_size == 1024
    assert tok.id_to_piece(0) == "<pad>" and tok.id_to_piece(1) == "</s>"
    assert tok.processor.bos_id() == -1
    assert tok.piece_to_id("▁red") == tok.encode("red")[0]
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.piece_to_id("▁definitely-not-a-piece")
    with pytest.raises(ValueError, match="outside the sentencepiece vocabulary"):
        tok.id_to_piece(5000)


def test_piece_types_match_sentencepiece(tok):
    types = tok.piece_types
    assert types.shape == (tok.vocab_size,)
    sp = tok.processor
    for i in range(tok.vocab_size):
        assert (types[i] == tokenizer.PIECE_CONTROL) == sp.is_control(i)
        assert (types[i] == tokenizer.PIECE_BYTE) == sp.is_byte(i)
        assert (types[i] == tokenizer.PIECE_UNKNOWN) == sp.is_unknown(i)
    user_defined = [sp.id_to_piece(int(i)) for i in np.flatnonzero(
        types == tokenizer.PIECE_USER_DEFINED)]
    assert user_defined == [f"▁{n}" for n in range(256)]
    assert (types == tokenizer.PIECE_BYTE).sum() == 256


def test_missing_model_names_path_and_fix(tmp_path):
    path = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=r"nope\.model") as info:
        tokenizer.Tokenizer(path)
    assert "make_tokenizer" in str(info.value)


def test_corrupt_model_names_path(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match=r"broken\.model") as info:
        tokenizer.Tokenizer(path)
    assert "make_tokenizer" in str(info.value)


def test_model_with_other_special_ids_is_rejected(tmp_path):
    prefix = tmp_path / "default_ids"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["pick up the red ball", "push the blue star left"] * 50),
        model_prefix=str(prefix), vocab_size=20, minloglevel=2, num_threads=1)
    with pytest.raises(ValueError, match="pad_id=-1 and eos_id=2"):
        tokenizer.Tokenizer(f"{prefix}.model")


@SETTINGS
@given(st.lists(WORDS, min_size=1, max_size=12))
def test_round_trip_of_corpus_alphabet_text(tok, words):
    text = " ".join(words)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == text


@SETTINGS
@given(st.text(alphabet=ALPHABET + " ", max_size=40))
def test_round_trip_normalizes_only_whitespace(tok, text):
    assert tok.decode(tok.encode(text)) == " ".join(text.split())


def test_any_text_encodes_through_byte_fallback(tok):
    text = "déplace 🤖 ☕ Ω"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_decode_stops_at_eos_and_skips_pad(tok):
    ids = tok.encode("pick up the red ball")
    assert tok.decode([tok.decoder_start_id, *ids, tok.eos_id, *tok.encode("junk")]) == (
        "pick up the red ball")
    assert tok.decode(np.asarray([*ids, 0, 0], dtype=np.int32)) == "pick up the red ball"
    with pytest.raises(ValueError, match="token id 4096"):
        tok.decode([*ids, 4096])


def test_encode_batch_pads_and_masks(tok):
    texts = ["red", "pick up the red ball"]
    ids, mask = tok.encode_batch(texts, length=12)
    assert ids.shape == mask.shape == (2, 12)
    assert ids.dtype == np.int32 and mask.dtype == bool
    for row, text in enumerate(texts):
        expected = [*tok.encode(text), tok.eos_id]
        assert ids[row, :len(expected)].tolist() == expected
        assert mask[row].tolist() == [True] * len(expected) + [False] * (12 - len(expected))
        assert (ids[row, len(expected):] == tok.pad_id).all()
    ids, mask = tok.encode_batch(texts, length=12, add_eos=False)
    assert tok.eos_id not in ids
    assert mask.sum(axis=1).tolist() == [len(tok.encode(t)) for t in texts]
    assert tok.num_truncated == 0


def test_encode_batch_counts_and_logs_truncation(caplog):
    tok = tokenizer.Tokenizer()
    long_text = "pick up the red ball and move it near the blue star"
    n_ids = len(tok.encode(long_text))
    with caplog.at_level(logging.WARNING, logger="rt2_jax.tokenizer"):
        ids, mask = tok.encode_batch([long_text, "red", long_text], length=6)
    assert tok.num_truncated == 2
    assert "truncated 2 of 3" in caplog.text
    assert ids[0].tolist() == [*tok.encode(long_text)[:5], tok.eos_id]
    assert mask[0].all()
    ids, _ = tok.encode_batch([long_text], length=6, add_eos=False)
    assert ids[0].tolist() == tok.encode(long_text)[:6]
    assert tok.num_truncated == 3
    assert n_ids > 6
    with pytest.raises(ValueError, match="length must be >= 2"):
        tok.encode_batch(["red"], length=1)
    with pytest.raises(TypeError, match="sequence of str"):
        tok.encode_batch("red", length=4)


@SETTINGS
@given(st.lists(st.lists(st.integers(3, 1023), max_size=10), max_size=5), st.integers(2, 8))
def test_pad_batch_shapes(ids_list, length):
    tok = tokenizer.Tokenizer.__new__(tokenizer.Tokenizer)
    tok.num_truncated = 0
    ids, mask = tokenizer.Tokenizer.pad_batch(tok, ids_list, length)
    assert ids.shape == (len(ids_list), length)
    expected_truncated = sum(len(s) > length - 1 for s in ids_list)
    assert tok.num_truncated == expected_truncated
    for row, seq in enumerate(ids_list):
        kept = [*seq[:length - 1], 1]
        assert ids[row].tolist() == kept + [0] * (length - len(kept))
        assert mask[row].sum() == len(kept)


def test_prompt_templates():
    assert tokenizer.robot_prompt(" pick up the red ball ") == (
        "Q: what action should the robot take to pick up the red ball? A:")
    assert tokenizer.vqa_prompt("what color is the star?") == "Q: what color is the star? A:"
    assert tokenizer.caption_prompt() == "Caption the image. A:"
    assert tokenizer.cot_target_text("pick rxbar chocolate.", "1 128 124 136 121 158 111 255") == (
        "Plan: pick rxbar chocolate. Action: 1 128 124 136 121 158 111 255")
    with pytest.raises(ValueError, match="instruction is empty"):
        tokenizer.robot_prompt("  ")
    with pytest.raises(ValueError, match="separates the plan"):
        tokenizer.cot_prefix("x. Action: y")


@SETTINGS
@given(st.lists(WORDS, min_size=1, max_size=6))
def test_split_cot_text_inverts_cot_target_text(words):
    plan = " ".join(words).strip(".")
    if not plan.strip() or ". Action:" in plan:
        return
    text = tokenizer.cot_target_text(plan, "0 1 2 3 4 5 6 7")
    assert tokenizer.split_cot_text(text) == (plan.strip(), "0 1 2 3 4 5 6 7")


def test_split_cot_text_rejects_other_text():
    for text in ("1 2 3 4 5 6 7 8", "Plan: . Action: 1", "Action: 1 2 3 4 5 6 7 8"):
        with pytest.raises(ValueError):
            tokenizer.split_cot_text(text)


def test_shipped_model_matches_the_script(tok):
    # Retraining gives the committed vocabulary (pieces and types); run the script if not.
    model = make_tokenizer.train_model()
    retrained = sentencepiece.SentencePieceProcessor(model_proto=model)
    assert retrained.get_piece_size() == tok.vocab_size
    assert [retrained.id_to_piece(i) for i in range(tok.vocab_size)] == [
        tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert tokenizer.piece_types(model).tolist() == tok.piece_types.tolist()
    assert make_tokenizer.train_model() == model  # deterministic


def test_leaf_modules_import_no_jax_or_tensorflow():
    code = ("import sys, rt2_jax.actions, rt2_jax.tokenizer; "
            "bad = [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
