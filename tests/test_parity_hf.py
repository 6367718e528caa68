"""Parity with Hugging Face transformers' T5 on the same weights (needs the `parity` extra).

Our encoder-decoder at a tiny size, random weights, copied into a T5.1.1-style
`T5ForConditionalGeneration`: teacher-forced logits must agree given the same input embeddings
(with padding) and decoder ids, and our cached greedy decoding must pick HF generate's tokens.
The weights also round-trip through the HF state_dict unchanged.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import tiny  # noqa: E402
from rt2_jax.models import encoder_decoder  # noqa: E402
from rt2_jax.models import params as params_lib  # noqa: E402
from rt2_jax.tools import hf_t5  # noqa: E402

B, LE, LD, NEW_TOKENS = 2, 12, 7, 8
LENGTHS = (LE, 7)  # the second row is padded


def _encode_decode(module, x, mask, decoder_ids):
    return module.decode(module.encode(x, mask), mask, decoder_ids)


@pytest.fixture(scope="module")
def setup():
    model_config = tiny.get_config().model
    model = encoder_decoder.from_config(model_config)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, LE, model_config.encdec.d_model)).astype(np.float32)
    mask = np.arange(LE)[None] < np.asarray(LENGTHS)[:, None]
    targets = rng.integers(2, model_config.vocab_size, (B, LD)).astype(np.int32)
    decoder_ids = np.asarray(encoder_decoder.shift_right(jnp.asarray(targets)))
    variables = model.init(jax.random.PRNGKey(0), x, mask, decoder_ids, method=_encode_decode)
    params = params_lib.unbox(variables)["params"]
    torch.manual_seed(0)
    hf_model = hf_t5.build_model(model_config.encdec, model_config.vocab_size, params)
    return dict(model=model, params=params, hf=hf_model, x=x, mask=mask,
                decoder_ids=decoder_ids, vocab=model_config.vocab_size)


def test_teacher_forced_logits_match(setup):
    s = setup
    ours = np.asarray(s["model"].apply({"params": s["params"]}, s["x"], s["mask"],
                                       s["decoder_ids"], method=_encode_decode))
    with torch.inference_mode():
        theirs = s["hf"](inputs_embeds=torch.from_numpy(s["x"]),
                         attention_mask=torch.from_numpy(s["mask"].astype(np.int64)),
                         decoder_input_ids=torch.from_numpy(s["decoder_ids"].astype(np.int64)),
                         ).logits.numpy()
    assert ours.shape == theirs.shape == (B, LD, s["vocab"])
    assert np.abs(ours).max() > 1.0  # not trivially small
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def _our_greedy(model, params, x, mask, steps):
    def run(params, x, mask):
        apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
        encoded = apply(encoder_decoder.EncoderDecoder.encode, x, mask)
        start = jnp.zeros((x.shape[0], 1), jnp.int32)
        logits, state = apply(encoder_decoder.EncoderDecoder.prefill, encoded, mask, start, steps)
        tokens = [jnp.argmax(logits[:, 0], -1).astype(jnp.int32)]
        for _ in range(steps - 1):
            logits, state = apply(encoder_decoder.EncoderDecoder.decode_step, state, tokens[-1])
            tokens.append(jnp.argmax(logits, -1).astype(jnp.int32))
        return jnp.stack(tokens, axis=1)

    return np.asarray(jax.jit(run)(params, x, mask))


def test_cached_greedy_matches_hf_generate(setup):
    s = setup
    ours = _our_greedy(s["model"], s["params"], s["x"], s["mask"], NEW_TOKENS)
    generation = transformers.GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        out = s["hf"].generate(inputs_embeds=torch.from_numpy(s["x"]),
                               attention_mask=torch.from_numpy(s["mask"].astype(np.int64)),
                               generation_config=generation)
    theirs = out.numpy()[:, 1:]  # drop the decoder start token
    assert theirs.shape == (B, NEW_TOKENS)
    np.testing.assert_array_equal(ours, theirs)


def test_state_dict_round_trip(setup):
    s = setup
    state = hf_t5.to_hf_state_dict({"params": {"encdec": s["params"]}})
    hf_state = s["hf"].state_dict()
    assert set(hf_state) <= set(state)
    for key, value in hf_state.items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
    back = hf_t5.from_hf_state_dict(hf_state, num_heads=tiny.get_config().model.encdec.num_heads)
    flat_ours, flat_back = params_lib.flatten(s["params"]), params_lib.flatten(back)
    assert set(flat_ours) == set(flat_back)
    for key, value in flat_ours.items():
        np.testing.assert_array_equal(np.asarray(value), flat_back[key], err_msg=key)
