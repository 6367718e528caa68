"""train.terminate_weight: robot rows whose action says "done" count w times in their
terminate token's loss. The step's metrics and gradient against an independent reference (the
model's logits and a hand-written weighted cross-entropy), gradient accumulation, the logged
loss, and the config errors."""

import data_fixtures
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from rt2_jax import actions, train_state
from rt2_jax.actions import NUM_BINS, NUM_DIMS

FIRST_ACTION_ID = data_fixtures.STEP_FIRST_ACTION_ID
STOP_ROWS = (0, 6)      # robot rows whose terminate target is "done"
ROBOT = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
_tables = data_fixtures.step_tables


def _config(**train):
    return data_fixtures.step_config(**{"terminate_weight": 4.0, **train})


def _batch(c):
    """Robot rows 0, 1, 2 and 6 (3 and 1 in the two halves, for accumulation); rows 0 and 6 say
    "done", 1 and 2 "continue"; web row 3's first target is the "done" id too (it must not
    count: only robot rows are weighted)."""
    rng = np.random.default_rng(0)
    batch = data_fixtures.synthetic_text_batch(c, rng)
    batch["is_robot"] = ROBOT.copy()
    bins = rng.integers(0, NUM_BINS, (len(ROBOT), NUM_DIMS))
    bins[:, 0] = actions.CONTINUE
    bins[list(STOP_ROWS), 0] = actions.TERMINATE
    batch["decoder_tokens"][ROBOT, :NUM_DIMS] = FIRST_ACTION_ID + bins[ROBOT]
    batch["decoder_tokens"][3, 0] = FIRST_ACTION_ID + actions.TERMINATE
    return batch


def _reference_loss(model, params, batch, w):
    """(sum of masked token cross-entropies + (w - 1) x the stop rows' terminate token
    cross-entropy) / tokens, from the model's logits; decoder inputs shifted by hand."""
    targets = batch["decoder_tokens"]
    dec_in = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    logits = model.apply({"params": params}, batch["image"], batch["encoder_tokens"],
                         batch["encoder_mask"], dec_in).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = batch["decoder_loss_mask"]
    weights = np.array(mask)
    weights[list(STOP_ROWS), 0] *= w
    return (ce * weights).sum() / mask.sum(), logits


@pytest.mark.parametrize("w", [4.0, 1.0])
def test_stop_rows_terminate_loss_is_weighted_as_a_hand_written_reference(w):
    c = _config(terminate_weight=w)
    batch = _batch(c)
    setup = train_state.make_setup(c)
    state = train_state.init_state(setup, 0)
    params = state.params
    (ref, logits), ref_grads = jax.value_and_grad(
        lambda p: _reference_loss(setup.model, p, batch, w), has_aux=True)(params)
    logits = np.asarray(logits, np.float64)

    fed = {k: v for k, v in batch.items() if k in setup.batch_sharding}
    step = train_state.make_train_step(setup, _tables(), num_sources=1)
    _, m = step(state, fed)
    m = jax.tree.map(np.asarray, m)

    # The metric: the two stop rows' terminate cross-entropy, in float64 from the logits.
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    stop_id = FIRST_ACTION_ID + actions.TERMINATE
    ce0 = log_z[:, 0] - logits[:, 0, stop_id]
    assert m["stop_rows"] == len(STOP_ROWS)
    np.testing.assert_allclose(m["stop_ce_sum"], ce0[list(STOP_ROWS)].sum(), rtol=1e-5)
    summary = train_state.summarize(m, ("robot",))
    np.testing.assert_allclose(summary["loss/terminate_stop"], ce0[list(STOP_ROWS)].mean(),
                               rtol=1e-5)
    # The logged loss stays the plain token average; the gradient is the weighted objective's.
    assert summary["loss"] == pytest.approx(m["loss_sum"] / m["token_count"])
    if w == 1.0:
        assert summary["loss"] == pytest.approx(float(ref), rel=1e-5)
    np.testing.assert_allclose(m["grad_norm"], optax.global_norm(ref_grads), rtol=2e-4)


def test_weighting_changes_the_gradient_and_accumulates_like_one_batch():
    norms = {}
    for name, c in {"w1": _config(terminate_weight=1.0), "w4": _config(),
                    "w4_accum": _config(grad_accum_steps=2)}.items():
        batch = _batch(c)
        setup = train_state.make_setup(c)
        step = train_state.make_train_step(setup, _tables(), num_sources=1)
        fed = {k: v for k, v in batch.items() if k in setup.batch_sharding}
        _, m = step(train_state.init_state(setup, 0), fed)
        norms[name] = float(m["grad_norm"])
        if name == "w4_accum":   # the two halves' sums add up to the whole batch's
            assert float(m["stop_rows"]) == len(STOP_ROWS)
    assert abs(norms["w4"] - norms["w1"]) > 1e-3 * norms["w1"]
    np.testing.assert_allclose(norms["w4_accum"], norms["w4"], rtol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_terminate_weight_is_explained(bad):
    with pytest.raises(ValueError, match="terminate_weight must be a finite number > 0"):
        train_state.terminate_weight(_config(terminate_weight=bad))


def test_default_is_unweighted():
    assert train_state.terminate_weight(tiny.get_config()) == 1.0
