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


def test_keypoint_tracking_measures_every_frame_against_where_things_are():
    rollouts = _rollouts("place_on_card", 3)
    n = sum(len(r["images"]) for r in rollouts)
    objects = np.stack([o for r in rollouts for o in r["object_xys"]])
    cards = np.stack([c for r in rollouts for c in r["second_xys"]])
    grippers = np.stack([g for r in rollouts for g in r["gripper_xys"]])
    # The object rides in the gripper once grasped: its per-frame position must follow.
    phases = [p for r in rollouts for p in r["phases"]]
    carry = np.array([p == "carry" for p in phases])
    np.testing.assert_allclose(objects[carry], grippers[carry], atol=1e-9)
    kp = np.full((n, 8, 2), -1.0)       # keypoints at the table's corner ...
    kp[:, 0] = objects * 2 - 1          # ... but 0 on the object, 1 on the card, 5 on the gripper
    kp[:, 1] = cards * 2 - 1
    kp[:, 5] = grippers * 2 - 1
    report = diagnose_policy.keypoint_tracking(kp, rollouts)
    assert report["gripper_keypoint"] == 5
    assert report["phases"]["all phases"]["frames"] == n
    for row in report["phases"].values():
        assert row["keypoint_0"] < 1e-6 and row["keypoint_1"] < 1e-6 and row["gripper"] < 1e-6
    # Keypoint 1 left on the card's first-frame spot is right; on the object's first spot it is
    # wrong once the object is carried away.
    first = np.stack([r["object_xy"] for r in rollouts for _ in r["images"]])
    kp[:, 1] = first * 2 - 1
    moved = diagnose_policy.keypoint_tracking(kp, rollouts)
    far = np.median(np.linalg.norm(cards - first, axis=-1)[np.array(
        [p == "release" for p in phases])])
    assert far > 0.1
    assert moved["phases"]["release"]["keypoint_1"] == pytest.approx(far, abs=1e-3)
    # A task naming one thing has no keypoint 1 column.
    pick = _rollouts("pick", 2)
    m = sum(len(r["images"]) for r in pick)
    assert "keypoint_1" not in diagnose_policy.keypoint_tracking(np.zeros((m, 4, 2)),
                                                                 pick)["phases"]["lift"]
    # With two keypoints there is none left to look for the gripper among.
    two = diagnose_policy.keypoint_tracking(kp[:, :2], rollouts)
    assert two["gripper_keypoint"] is None and "gripper" not in two["phases"]["carry"]


def test_the_experts_world_is_the_exports():
    """diagnose_policy replays the expert the export's data came from: toy_place_high_release's
    larger cards and its release where it carries; an older config's defaults otherwise."""
    from configs import toy_place_high_release

    high = diagnose_policy.export_world(_Replay([], toy_place_high_release.get_config()))
    assert high == {"grid": 0.1, "move_quantum": 0.1, "card_half": 0.11, "retreat_z": 0.4,
                    "release_z": 0.3, "camera": "fixed"}
    old = diagnose_policy.export_world(_Replay([], toy_place.get_config()))
    assert (old["card_half"], old["retreat_z"], old["release_z"]) == (0.07, 0.1, 0.06)
    del high["camera"]
    (rollout,) = diagnose_policy.expert_frames("place_on_card", episodes=1, seed=0,
                                               concepts="seen", **high)
    assert rollout["solved"] and "lower" not in rollout["phases"]
    assert "release" in rollout["phases"] and rollout["phases"][-1] == "done"


def test_card_visible_is_the_share_of_the_named_cards_pixels_left_uncovered():
    from rt2_jax import sim

    env = sim.TabletopEnv(grid=0.1)
    env.reset(seed=3, options={"task": "place_on_card"})
    static = env.unwrapped._static
    assert diagnose_policy.card_visible(env, static) == 1.0
    assert diagnose_policy.card_visible(env, 255 - static) == 0.0
    covered = static.copy()
    state, task = env.unwrapped.state, env.unwrapped.task
    _, cy = render._to_px(state.card_xy[state.card_index(task.symbol)], static.shape[0])
    covered[:int(cy), :] = 0             # everything above the card's centre row painted over
    assert 0.3 < diagnose_policy.card_visible(env, covered) < 0.7
    # Over the card, the held object and the gripper hide most of it; on the way they do not.
    rollouts = _rollouts("place_on_card", 4)
    seen = {p: [] for p in ("above", "carry", "release")}
    for r in rollouts:
        for p, v in zip(r["phases"], r["card_visible"], strict=True):
            if p in seen:
                seen[p].append(v)
    assert np.mean(seen["above"]) > 0.9 and np.mean(seen["release"]) < 0.5
    assert all(v is None for r in _rollouts("pick", 1) for v in r["card_visible"])


def test_diagnose_runs_a_keypoint_model_and_the_command_line(tmp_path, capsys, monkeypatch):
    config = toy_place.get_config()
    out = str(tmp_path / "export")
    checkpoints.export(out, random_params(config), config, tokenizer_lib.default_model_path(),
                       None, _bounds())
    policy = policy_lib.Policy.from_export(out)
    report = diagnose_policy.diagnose(policy, tasks=("pick", "place_on_card"), episodes=2,
                                      log=lambda line: None)
    assert report["grid"] == 0.1 and report["move_quantum"] == 0.1
    assert report["card_half"] == world.CARD_HALF      # the export's (toy_place: the default)
    place, pick = report["tasks"]["place_on_card"], report["tasks"]["pick"]
    assert place["expert_solved"] == 1.0 and "carry" in place["agreement"]
    assert set(place["keypoints"]) == {"keypoint_0", "keypoint_1"}
    assert set(pick["keypoints"]) == {"keypoint_0"}
    # Every frame's keypoints, the image tower's own action readout (toy_place has one) and
    # the card's visibility, per phase.
    assert set(place["keypoint_tracking"]["phases"]["carry"]) == {
        "frames", "keypoint_0", "keypoint_1", "gripper"}
    assert 2 <= place["keypoint_tracking"]["gripper_keypoint"] < config.model.vit.keypoints
    assert place["readout_agreement"]["carry"]["frames"] == place["agreement"]["carry"]["frames"]
    assert 0.0 <= place["card_visible"]["release"] < place["card_visible"]["above"]
    assert "card_visible" not in pick
    kp_all, aux = diagnose_policy.tower_readouts(policy, _rollouts("pick", 1), batch_size=4)
    assert aux.shape == (kp_all.shape[0], 8) and kp_all.shape[1:] == (
        config.model.vit.keypoints, 2)
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
    text = diagnose_policy.format_report(report)
    assert "carry" in text and "action readout" in text and "nearest the gripper" in text
    # The symbols category's scenes name a held-out card: only its place tasks run.
    symbols = diagnose_policy.diagnose(policy, tasks=("pick", "place_on_card"), episodes=1,
                                       concepts="symbols", log=lambda line: None)
    assert set(symbols["tasks"]) == {"place_on_card"}
    with pytest.raises(ValueError, match="place_on_card"):
        diagnose_policy.diagnose(policy, tasks=("pick",), episodes=1, concepts="symbols")
