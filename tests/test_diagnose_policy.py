"""rt2_jax.tools.diagnose_policy: per-phase agreement with the expert, keypoint distances, and
the command line on a tiny keypoint model."""

import json

import numpy as np
import pytest
from absl import flags
from test_policy import random_params

from configs import toy_place
from rt2_jax import actions as actions_lib
from rt2_jax import checkpoints
from rt2_jax import policy as policy_lib
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.models.vit import keypoint_grid
from rt2_jax.sim import render, world
from rt2_jax.tools import diagnose_policy


def _bounds():
    return actions_lib.ActionBounds(tuple(world.ACTION_LOW[1:]), tuple(world.ACTION_HIGH[1:]))


class _Replay:
    """A stand-in policy that answers each frame, in order, with given bins."""

    def __init__(self, bins, config):
        self.action_tokenizer = actions_lib.ActionTokenizer(_bounds(), tokenizer_lib.Tokenizer())
        self.config = config
        self._bins = list(bins)

    def predict(self, images, instructions):
        assert len(images) == len(instructions)
        out, self._bins = self._bins[:len(images)], self._bins[len(images):]
        return {"bins": np.stack(out)}


def _rollouts(kind, episodes=3):
    return diagnose_policy.expert_frames(kind, episodes=episodes, seed=0, concepts="seen",
                                         grid=0.1, move_quantum=0.1)


def test_expert_frames_follow_a_solved_expert_episode_phase_by_phase():
    rollouts = _rollouts("place_on_card")
    for r in rollouts:
        assert r["solved"]
        assert len(r["images"]) == len(r["actions"]) == len(r["phases"])
        # The plan's order: the object is grasped and carried before the card is reached.
        order = [p for k, p in enumerate(r["phases"]) if k == 0 or r["phases"][k - 1] != p]
        assert order.index("grasp") < order.index("carry") < order.index("release")
        assert r["phases"][-1] == "done" and r["actions"][-1][0] == 1.0
        assert r["second_xy"] is not None    # the named card
    assert all(r["second_xy"] is None for r in _rollouts("pick", 2))


def test_agreement_counts_each_phase_and_dim():
    rollouts = _rollouts("place_on_card")
    tok = actions_lib.ActionTokenizer(_bounds(), tokenizer_lib.Tokenizer())
    expert = tok.encode(np.stack([a for r in rollouts for a in r["actions"]]))
    phases = [p for r in rollouts for p in r["phases"]]
    config = toy_place.get_config()
    perfect = diagnose_policy.agreement(_Replay(expert, config), rollouts, batch_size=7)
    assert perfect["all phases"]["frames"] == len(phases)
    assert all(row[d] == 1.0 for row in perfect.values() for d in [*diagnose_policy.DIMS, "all"])
    # One bin off in dy on carry frames only, and a wrong terminate on every third frame.
    wrong = expert.copy()
    carry = np.array([p == "carry" for p in phases])
    wrong[carry, 2] += 1
    third = np.arange(len(phases)) % 3 == 0
    wrong[third, 0] = 1 - wrong[third, 0]
    report = diagnose_policy.agreement(_Replay(wrong, config), rollouts, batch_size=5)
    assert report["carry"]["dy"] == 0.0 and report["carry"]["dx"] == 1.0
    assert report["lift"]["dy"] == 1.0
    assert report["all phases"]["dy"] == pytest.approx(1 - carry.mean(), abs=1e-3)
    assert report["all phases"]["terminate"] == pytest.approx(1 - third.mean(), abs=1e-3)
    assert report["all phases"]["all"] == pytest.approx(1 - (carry | third).mean(), abs=1e-3)


def test_keypoint_distances_use_the_renderer_and_keypoint_grid_conventions(monkeypatch):
    rollouts = _rollouts("place_on_card", 4)
    # Where the renderer draws a thing, the keypoint grid's cell says: uv of the pixel under the
    # object's centre, read back through keypoint_grid, is the object's table position.
    size = rollouts[0]["images"][0].shape[0]
    grid = keypoint_grid(size, size)

    def uv_of(xy):
        col, row = render._to_px(xy, size)
        return grid[int(row) * size + int(col)]

    truth = np.stack([np.stack([uv_of(r["object_xy"]), uv_of(r["second_xy"])])
                      for r in rollouts])
    config = toy_place.get_config()
    fake = _Replay([], config)
    monkeypatch.setattr(diagnose_policy, "first_frame_keypoints", lambda *a: truth)
    right = diagnose_policy.keypoint_distances(fake, rollouts)
    assert right["keypoint_0"]["median"] < 1.0 / size and right["keypoint_1"]["median"] < 1.0 / size
    assert right["keypoint_0"]["within_tolerance"] == 1.0 and right["keypoint_0"]["frames"] == 4
    swapped = truth[:, ::-1]     # keypoint 0 on the card, keypoint 1 on the object
    monkeypatch.setattr(diagnose_policy, "first_frame_keypoints", lambda *a: swapped)
    wrong = diagnose_policy.keypoint_distances(fake, rollouts)
    far = np.median([np.linalg.norm(r["object_xy"] - r["second_xy"]) for r in rollouts])
    assert wrong["keypoint_0"]["median"] == pytest.approx(far, abs=2.0 / size)
    assert wrong["keypoint_0"]["within_tolerance"] == 0.0


def test_diagnose_runs_a_keypoint_model_and_the_command_line(tmp_path, capsys, monkeypatch):
    config = toy_place.get_config()
    out = str(tmp_path / "export")
    checkpoints.export(out, random_params(config), config, tokenizer_lib.default_model_path(),
                       None, _bounds())
    policy = policy_lib.Policy.from_export(out)
    report = diagnose_policy.diagnose(policy, tasks=("pick", "place_on_card"), episodes=2,
                                      log=lambda line: None)
    assert report["grid"] == 0.1 and report["move_quantum"] == 0.1
    place, pick = report["tasks"]["place_on_card"], report["tasks"]["pick"]
    assert place["expert_solved"] == 1.0 and "carry" in place["agreement"]
    assert set(place["keypoints"]) == {"keypoint_0", "keypoint_1"}
    assert set(pick["keypoints"]) == {"keypoint_0"}
    # The keypoints it reads are the ones a full forward pass of the model sows.
    rollouts = _rollouts("pick", 2)
    images = [r["images"][0] for r in rollouts]
    instructions = [r["instruction"] for r in rollouts]
    kp = diagnose_policy.first_frame_keypoints(policy, images, instructions)
    pixels, _ = policy.prepare_cameras(images, None)
    tokens, mask = policy.encode_prompts(instructions)
    import jax.numpy as jnp
    decoder_in = jnp.zeros((len(images), 1), jnp.int32)
    _, sown = policy.model.apply({"params": policy.params}, pixels, tokens, mask, decoder_in,
                                 mutable=["intermediates"])
    np.testing.assert_allclose(kp, np.asarray(sown["intermediates"]["img"]["keypoints"][0]),
                               atol=1e-5)
    assert kp.shape == (2, config.model.vit.keypoints, 2)
    # The command line, with a bad task kind explained.
    fv = flags.FlagValues()
    diagnose_policy.define_flags(fv)
    fv(["prog", f"--export={out}", "--episodes=1", "--tasks=pick", "--json"])
    monkeypatch.setattr(diagnose_policy.flags, "FLAGS", fv)
    diagnose_policy.main(["prog"])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["tasks"]) == {"pick"}
    with pytest.raises(ValueError, match="tasks must be some of"):
        diagnose_policy.diagnose(policy, tasks=("fly",), episodes=1)
    assert "carry" in diagnose_policy.format_report(report)
    # The symbols category's scenes name a held-out card: only its place tasks run.
    symbols = diagnose_policy.diagnose(policy, tasks=("pick", "place_on_card"), episodes=1,
                                       concepts="symbols", log=lambda line: None)
    assert set(symbols["tasks"]) == {"place_on_card"}
    with pytest.raises(ValueError, match="place_on_card"):
        diagnose_policy.diagnose(policy, tasks=("pick",), episodes=1, concepts="symbols")
