"""The keypoint head's auxiliary action readout (vit.keypoint_action_head,
train.keypoint_action_weight): its loss against a float64 reference, where its gradient goes,
gradient accumulation, and the config errors."""

import data_fixtures
import jax
import numpy as np
import pytest
from flax import traverse_util

from rt2_jax import train_state
from rt2_jax.actions import NUM_BINS, NUM_DIMS

FIRST_ACTION_ID = data_fixtures.STEP_FIRST_ACTION_ID
_tables = data_fixtures.step_tables


def _config(**train):
    c = data_fixtures.step_config(**{"keypoint_action_weight": 1.5, **train})
    c.model.vit.keypoints = 4
    c.model.vit.keypoint_query = True
    c.model.vit.keypoint_action_head = True
    return c


def _batch(c, rng):
    """Robot rows 0, 1, 2 and 6 (unequal counts in the two halves, for accumulation), the rest
    web rows; row 1 does not record dim 3."""
    batch = data_fixtures.synthetic_text_batch(c, rng)
    robot = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    batch["is_robot"] = robot
    bins = rng.integers(0, NUM_BINS, (len(robot), NUM_DIMS))
    batch["decoder_tokens"][robot, :NUM_DIMS] = FIRST_ACTION_ID + bins[robot]
    batch["decoder_loss_mask"][1, 3] = 0.0
    return batch, bins


def _flat(params):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def test_the_readout_loss_matches_a_float64_reference_and_trains_only_when_weighted():
    rng = np.random.default_rng(0)
    configs = {"on": _config(), "accum": _config(grad_accum_steps=2),
               "off": _config(keypoint_action_weight=0.0)}
    batch, bins = _batch(configs["on"], rng)
    tables = _tables()
    before, after, metrics, grad_norms = {}, {}, {}, {}
    for name, c in configs.items():
        setup = train_state.make_setup(c)
        step = train_state.make_train_step(setup, tables, num_sources=3)
        state = train_state.init_state(setup, 0)
        before[name] = _flat(state.params)
        if name == "on":
            # An independent reading of the readout: the encoder alone, same parameters.
            _, sown = setup.model.apply(
                {"params": state.params}, batch["image"], batch["encoder_tokens"],
                batch["encoder_mask"], method="encode", mutable=["intermediates"])
            logits = np.asarray(
                sown["intermediates"]["img"]["keypoint_action_logits"][0], np.float64)
        fed = {k: v for k, v in batch.items() if k in setup.batch_sharding}
        state, m = step(state, fed)
        after[name] = _flat(state.params)
        metrics[name], grad_norms[name] = jax.tree.map(np.asarray, m), float(m["grad_norm"])

    assert logits.shape == (8, NUM_DIMS, NUM_BINS)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = log_z - np.take_along_axis(logits, bins[..., None], -1)[..., 0]
    weight = batch["is_robot"][:, None] * (batch["decoder_loss_mask"][:, :NUM_DIMS] > 0)
    assert weight.sum() == 4 * NUM_DIMS - 1
    np.testing.assert_allclose(metrics["on"]["kp_action_ce_sum"], (ce * weight).sum(),
                               rtol=1e-5)
    assert metrics["on"]["kp_action_count"] == weight.sum()
    hits = (logits.argmax(-1) == bins) * weight
    assert metrics["on"]["kp_action_correct"] == hits.sum()
    summary = train_state.summarize(metrics["on"], ("a", "b", "c"))
    np.testing.assert_allclose(summary["kp_action_loss"], (ce * weight).sum() / weight.sum(),
                               rtol=1e-5)
    assert "kp_action_loss" not in train_state.summarize(metrics["off"], ("a", "b", "c"))

    readout = [k for k in before["on"] if "keypoint_action" in k]
    convs = [k for k in before["on"] if "keypoint_Conv" in k]
    assert readout and convs
    # Weighted, the readout and the keypoint convs under it move; unweighted (no weight decay
    # here), the readout gets no gradient at all, and the convs a different one.
    for k in readout:
        assert not np.allclose(after["on"][k], before["on"][k]), k
        np.testing.assert_array_equal(after["off"][k], before["off"][k])
    assert any(not np.allclose(after["on"][k], after["off"][k]) for k in convs)
    assert abs(grad_norms["on"] - grad_norms["off"]) > 1e-3 * grad_norms["off"]
    # Two micro-batches with 3 and 1 robot rows give one batch's loss and gradient (Adam's
    # first step is about lr x sign(g) per weight, so the updated weights are not compared).
    np.testing.assert_allclose(metrics["accum"]["kp_action_ce_sum"],
                               metrics["on"]["kp_action_ce_sum"], rtol=1e-5)
    np.testing.assert_allclose(grad_norms["accum"], grad_norms["on"], rtol=1e-4)


def test_bad_readout_configs_are_explained():
    c = _config()
    c.model.vit.keypoint_action_head = False
    with pytest.raises(ValueError, match="keypoint_action_head=True"):
        train_state.keypoint_action_weight(c)
    with pytest.raises(ValueError, match="must be >= 0"):
        train_state.keypoint_action_weight(_config(keypoint_action_weight=-1.0))
    c = _config()
    c.model.wrist_camera = "tokens"
    with pytest.raises(ValueError, match="wrist camera"):
        train_state.keypoint_action_weight(c)
    assert train_state.keypoint_action_weight(_config(keypoint_action_weight=0.0)) == 0.0
    c = _config()
    c.model.vit.keypoints = 0
    with pytest.raises(ValueError, match="keypoints >= 1"):
        train_state.make_setup(c)
