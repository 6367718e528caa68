"""Policy from an export dir (valid actions, parity with the decoder and the TF pipeline, one
compile, input errors) and the closed-loop toy-world evaluation."""

import json
import os
import types

import jax
import ml_collections
import numpy as np
import pytest
from absl import app, flags
from PIL import Image

from configs import tiny
from rt2_jax import actions as actions_lib
from rt2_jax import checkpoints, decoding, sim, train_state
from rt2_jax import policy as policy_lib
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.models import params as params_lib
from rt2_jax.models.vlm import VLM
from rt2_jax.sim import world
from rt2_jax.tools import eval_sim

LOW, HIGH = sim.ACTION_LOW[1:], sim.ACTION_HIGH[1:]


def random_params(config, seed=0):
    """Parameters of the config's model drawn with numpy from the shapes jax.eval_shape gives
    (no XLA compile: quicker than model.init on a busy CPU). Norm scales are 1."""
    model = VLM.from_config(config)
    args, kwargs = train_state.init_inputs(config)   # a wrist camera's inputs too, if any
    shapes = jax.eval_shape(lambda a, k: model.init(jax.random.PRNGKey(0), *a, **k),
                            args, kwargs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if "scale" in jax.tree_util.keystr(path):
            return np.ones(leaf.shape, np.float32)
        return (rng.standard_normal(leaf.shape) * 0.1).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, params_lib.unbox(shapes["params"]))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny-config export with random weights and the toy world's action bounds."""
    config = tiny.get_config()
    bounds = actions_lib.ActionBounds(tuple(LOW), tuple(HIGH))
    out = str(tmp_path_factory.mktemp("policy") / "export")
    checkpoints.export(out, random_params(config), config, tokenizer_lib.default_model_path(),
                       None, bounds)
    return out


@pytest.fixture(scope="module")
def policy(export_dir):
    return policy_lib.Policy.from_export(export_dir)


def observations(n, concepts="seen"):
    env = sim.TabletopEnv(concepts=concepts)
    obs = [env.reset(seed=seed)[0] for seed in range(n)]
    return [o["image"] for o in obs], [o["instruction"] for o in obs]


def test_actions_are_valid(policy):
    images, instructions = observations(2)
    action = policy.act(images[0], instructions[0])
    assert action.shape == (8,) and action.dtype == np.float32
    rng = np.random.default_rng(0)
    odd_sizes = [images[0], rng.integers(0, 256, (90, 150, 3), np.uint8)]
    batch = policy.act_batch(odd_sizes, instructions)
    assert batch.shape == (2, 8) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], action)
    centres = policy.bin_centres()
    for row in batch:
        assert row[0] in (0.0, 1.0)
        assert np.all(row[1:] >= LOW) and np.all(row[1:] <= HIGH)
        # Each continuous dim is exactly one of its 256 bin centres.
        assert np.all(np.isclose(centres, row[1:, None], rtol=0, atol=1e-6).any(axis=1))


def test_equals_decoder_actions_on_the_same_input(policy, export_dir):
    images, instructions = observations(2, concepts="unseen")
    params, config, stats = checkpoints.load_export(export_dir)
    tok = tokenizer_lib.Tokenizer(config.tokenizer.model_path)
    action_tok = actions_lib.ActionTokenizer(
        actions_lib.ActionBounds.from_json_dict(stats["bounds"]), tok, stats["mapping"])
    decoder = decoding.Decoder(VLM.from_config(config), action_tok, config.model.vocab_size)
    tokens, mask = tok.encode_batch([tokenizer_lib.robot_prompt(i) for i in instructions],
                                    config.max_prompt_len, add_eos=True)
    assert mask.sum(1).max() < config.max_prompt_len  # nothing truncated, EOS present
    np.testing.assert_array_equal(tokens[np.arange(2), mask.sum(1) - 1], tok.eos_id)
    pixels = np.stack([policy.preprocess_image(i) for i in images])
    assert pixels.shape == (2, config.image_size, config.image_size, 3)
    expected = decoder.actions(params, pixels, tokens, mask)
    got = policy.predict(images, instructions)
    np.testing.assert_array_equal(got["bins"], expected["bins"])
    np.testing.assert_array_equal(got["action"], expected["action"])


def test_policy_uses_the_configured_aspect_mode(policy):
    config = policy.config.copy_and_resolve_references()
    config.data.image_aspect = "pad"
    padded = policy_lib.Policy(policy.params, config, policy.action_tokenizer)
    wide = np.full((50, 100, 3), 200, np.uint8)
    out = padded.preprocess_image(wide)
    assert out.shape == (64, 64, 3)
    assert out[0].max() == 0 and out[-1].max() == 0 and out[32].min() == 200  # letterboxed
    assert policy.preprocess_image(wide).min() == 200                          # squashed
    config.data.image_aspect = "stretch"
    with pytest.raises(ValueError, match="image_aspect"):
        policy_lib.Policy(policy.params, config, policy.action_tokenizer)


def test_second_call_does_not_recompile(policy):
    images, instructions = observations(3)
    policy.act(images[0], instructions[0])
    compiled = policy.num_compilations
    policy.act(images[1], instructions[1])
    policy.act(np.zeros((30, 40, 3), np.uint8), "pick up the red block")  # other image size
    assert policy.num_compilations == compiled
    policy.act_batch(images[:2], instructions[:2])
    compiled = policy.num_compilations
    policy.act_batch(images[1:], instructions[1:])
    assert policy.num_compilations == compiled


def test_bad_inputs_are_explained(policy, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        policy_lib.Policy.from_export(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not a complete export"):
        policy_lib.Policy.from_export(str(tmp_path))
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        policy.act(image.astype(np.float32), "pick up the red block")
    with pytest.raises(TypeError, match="numpy"):
        policy.act(image.tolist(), "pick up the red block")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        policy.act(image[..., 0], "pick up the red block")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        policy.act(np.zeros((64, 64, 4), np.uint8), "pick up the red block")
    with pytest.raises(ValueError, match="empty side"):
        policy.act(np.zeros((0, 64, 3), np.uint8), "pick up the red block")
    with pytest.raises(ValueError, match="instruction is empty"):
        policy.act(image, "  ")
    with pytest.raises(TypeError, match="instruction must be a str"):
        policy.act(image, None)
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        policy.act_batch([image, image], ["pick up the red block"])
    with pytest.raises(TypeError, match="sequence of str"):
        policy.act_batch([image], "pick up the red block")


EXPECTED_KEYS = {"success_rate", "per_task", "expert_success_rate", "episodes",
                 "mean_episode_length", "num_episodes"}


def test_eval_sim_runs_episodes_end_to_end(policy):
    lines = []
    result = eval_sim.evaluate(policy, episodes=2, concepts="unseen", seed=3, batch_size=2,
                               max_episode_steps=3, log=lines.append)
    assert EXPECTED_KEYS <= set(result)
    assert result["num_episodes"] == 2 and len(lines) == 2
    assert [r["seed"] for r in result["episodes"]] == [3, 4]
    assert all(1 <= r["steps"] <= 3 for r in result["episodes"])
    assert sum(v["num_episodes"] for v in result["per_task"].values()) == 2
    assert 0.0 <= result["success_rate"] <= 1.0
    assert 0.0 <= result["expert_success_rate"] <= 1.0
    assert all(r["expert_steps"] <= 3 for r in result["episodes"])   # the same step limit
    json.dumps(result)


def test_eval_sim_cli_prints_json(export_dir, policy, capsys, monkeypatch):
    loaded = []

    def from_export(path, **kwargs):   # the module's policy, whose loop is compiled already
        loaded.append(path)
        assert kwargs["sampling"].terminate_threshold == 0.25   # the flag reaches the decoder
        return policy

    monkeypatch.setattr(policy_lib.Policy, "from_export", from_export)
    fv = flags.FlagValues()
    eval_sim.define_flags(fv)
    gif = os.path.join(export_dir, "..", "episodes.gif")
    fv(["eval_sim", f"--export={export_dir}", "--episodes=2", "--categories=seen,symbols",
        "--max_episode_steps=2", "--batch_size=2", "--vqa_questions=5", f"--gif={gif}",
        "--gif_episodes=1", "--terminate_threshold=0.25", "--json"])
    returned = eval_sim.run(fv)
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert loaded == [export_dir]
    assert set(result["success"]) == {"seen", "symbols"} and result["export"] == export_dir
    for category in ("seen", "symbols"):
        assert EXPECTED_KEYS - {"episodes"} <= set(result["categories"][category])
    assert len(result["episodes"]) == 4
    assert {r["category"] for r in result["episodes"]} == {"seen", "symbols"}
    assert err.count("expert:") == 4   # one progress line per episode, on stderr
    assert 0.0 <= result["vqa_accuracy"] <= 1.0 and result["vqa"]["num_questions"] == 5
    assert "decoded_actions" in result["episodes"][0] and "frames" not in result["episodes"][0]
    with Image.open(gif) as image:   # a GIF a person can open: one frame per step, showing
        assert image.n_frames == result["episodes"][0]["steps"]   # the camera and the table
        assert image.size[0] > 2 * image.size[1] - 2 * 44
    assert result["camera"] == "fixed"   # the export's training camera (the default)
    assert result == json.loads(json.dumps(returned))
    fv.terminate_threshold = 1.0   # outside (0, 1): a usage error naming it, before any loading
    with pytest.raises(app.UsageError, match="terminate_threshold"):
        eval_sim.make_policy(fv)


def test_evaluator_runs_the_camera_it_is_given():
    # The scripted expert reads the state, not the image: the same seeds give the same outcomes
    # under either camera, and the recorded frames are what that camera sees.
    results = {cam: eval_sim.evaluate(eval_sim.ExpertPolicy(), episodes=3, batch_size=3,
                                      log=None, record_frames=1, camera=cam)
               for cam in sim.CAMERAS}
    fixed, gripper = (results[c]["episodes"][0] for c in ("fixed", "gripper"))
    assert fixed["success"] == gripper["success"] and fixed["steps"] == gripper["steps"]
    np.testing.assert_array_equal(fixed["frames"][0], fixed["table_frames"][0])
    np.testing.assert_array_equal(gripper["table_frames"][0], fixed["table_frames"][0])
    assert not np.array_equal(gripper["frames"][0], gripper["table_frames"][0])


def test_evaluator_runs_the_grid_it_is_given_and_defaults_to_the_exports():
    """Scenes (objects and the gripper's start) sit on the grid the evaluator is given, the
    expert reference runs the same scenes, and the CLI's default is the export's training grid:
    a policy trained on gridded scenes is not tested on positions it never saw."""
    starts = []

    class Recording(eval_sim.ExpertPolicy):
        def reset_episode(self, env, seed):
            super().reset_episode(env, seed)
            starts.append(np.concatenate([env.state.obj_xy.ravel(), env.state.ee[:2]]))

    def on_grid(xy, pitch):
        return bool(np.all(np.abs(xy / pitch - np.round(xy / pitch)) < 1e-6))

    result = eval_sim.evaluate(Recording(), episodes=4, batch_size=2, log=None, grid=0.1)
    assert len(starts) == 4 and all(on_grid(xy, 0.1) for xy in starts)
    assert result["success_rate"] == result["expert_success_rate"] == 1.0
    starts.clear()
    eval_sim.evaluate(Recording(), episodes=4, batch_size=2, log=None, max_episode_steps=1)
    assert not all(on_grid(xy, 0.1) for xy in starts)   # the default: anywhere

    fv = flags.FlagValues()
    eval_sim.define_flags(fv)
    fv(["eval_sim"])
    trained = types.SimpleNamespace(config=ml_collections.ConfigDict(
        {"data": {"toy_world": {"grid": 0.1, "camera": "gripper"}}}))
    assert eval_sim.grid_for(fv, trained) == 0.1 and eval_sim.camera_for(fv, trained) == "gripper"
    assert eval_sim.grid_for(fv, eval_sim.ExpertPolicy()) == 0.0   # no export: anywhere
    fv(["eval_sim", "--grid=0", "--camera=fixed"])
    assert eval_sim.grid_for(fv, trained) == 0.0 and eval_sim.camera_for(fv, trained) == "fixed"


def test_evaluator_runs_the_card_size_it_is_given_and_defaults_to_the_exports():
    """Scenes have the cards the evaluator is given (the expert reference too), and the CLI's
    default is the export's training card size."""
    sizes = []

    class Recording(eval_sim.ExpertPolicy):
        def reset_episode(self, env, seed):
            super().reset_episode(env, seed)
            sizes.append(env.state.card_half)

    result = eval_sim.evaluate(Recording(), episodes=3, batch_size=3, log=None, grid=0.1,
                               tasks=("place_on_card",), card_half=0.11)
    assert sizes == [0.11] * 3
    assert result["success_rate"] == result["expert_success_rate"] == 1.0
    fv = flags.FlagValues()
    eval_sim.define_flags(fv)
    fv(["eval_sim"])
    trained = types.SimpleNamespace(config=ml_collections.ConfigDict(
        {"data": {"toy_world": {"card_half": 0.11}}}))
    assert eval_sim.card_half_for(fv, trained) == 0.11
    assert eval_sim.card_half_for(fv, eval_sim.ExpertPolicy()) == world.CARD_HALF
    fv(["eval_sim", "--card_half=0.1"])
    assert eval_sim.card_half_for(fv, trained) == 0.1
    fv(["eval_sim", "--card_half=0.5"])
    with pytest.raises(ValueError, match="card_half"):
        eval_sim.card_half_for(fv, trained)
    # Held-out VQA scenes draw the same cards.
    image_small = eval_sim.heldout_vqa(4, seed=0)
    image_big = eval_sim.heldout_vqa(4, seed=0, card_half=0.11)
    assert len(image_big) == 4 and not all(
        np.array_equal(a[0], b[0]) for a, b in zip(image_small, image_big, strict=True))


def test_evaluator_runs_the_task_kinds_it_is_given_and_defaults_to_the_exports():
    """Episodes cycle through the given task kinds, the expert reference runs the same task on
    the same seed, and the CLI's default is the export's training kinds: a policy trained on
    picks alone is scored on picks."""
    result = eval_sim.evaluate(eval_sim.ExpertPolicy(), episodes=4, batch_size=2, log=None,
                               tasks=("move_near", "pick"))
    assert [r["task"] for r in result["episodes"]] == ["move_near", "pick"] * 2
    assert result["success_rate"] == result["expert_success_rate"] == 1.0
    drawn = eval_sim.evaluate(eval_sim.ExpertPolicy(), episodes=8, batch_size=4, log=None,
                              max_episode_steps=1)
    assert len({r["task"] for r in drawn["episodes"]}) > 1   # the default: the seed draws
    with pytest.raises(ValueError, match="unknown task kinds"):
        eval_sim.evaluate(eval_sim.ExpertPolicy(), episodes=1, tasks=("fly",))
    # 'symbols' tasks are place_on_card: with picks alone that category cannot run.
    with pytest.raises(ValueError, match="place_on_card"):
        eval_sim.evaluate(eval_sim.ExpertPolicy(), episodes=1, concepts="symbols",
                          tasks=("pick",))
    both = eval_sim.evaluate_all(eval_sim.ExpertPolicy(), categories=["seen", "symbols"],
                                 episodes=2, batch_size=2, log=None, tasks=("pick",))
    assert both["success"] == {"seen": 1.0, "symbols": None} and set(both["skipped"]) == {
        "symbols"}
    assert "symbols: skipped" in eval_sim.format_summary(both)
    mixed = eval_sim.evaluate_all(eval_sim.ExpertPolicy(), categories=["symbols"], episodes=2,
                                  batch_size=2, log=None, tasks=("pick", "place_on_card"))
    assert [r["task"] for r in mixed["episodes"]] == ["place_on_card"] * 2

    fv = flags.FlagValues()
    eval_sim.define_flags(fv)
    fv(["eval_sim"])
    trained = types.SimpleNamespace(config=ml_collections.ConfigDict(
        {"data": {"toy_world": {"tasks": ("pick",)}}}))
    assert eval_sim.tasks_for(fv, trained) == ("pick",)
    assert eval_sim.tasks_for(fv, eval_sim.ExpertPolicy()) == ()   # no export: drawn
    fv(["eval_sim", "--tasks=push,pick"])
    assert eval_sim.tasks_for(fv, trained) == ("push", "pick")


@pytest.mark.parametrize("name", ["expert", "random"])
def test_reference_policies_through_the_same_loop(name):
    """The scripted expert must solve >= 99% through the evaluator; random actions ~never."""
    policy = eval_sim.ExpertPolicy() if name == "expert" else eval_sim.RandomPolicy(seed=0)
    result = eval_sim.evaluate_all(policy, episodes=25, batch_size=5, log=None)
    assert set(result["success"]) == set(world.EVAL_CATEGORIES)
    for category, rate in result["success"].items():
        if name == "expert":
            assert rate >= 0.99, (category, rate)
        else:
            assert rate <= 0.08, (category, rate)
    assert result["vqa_accuracy"] is None   # neither policy answers questions
    seen = result["categories"]["seen"]
    if name == "expert":   # grasps what it is told to; push shoves with a closed, empty gripper
        for kind, row in seen["per_task"].items():
            grasps = kind != "push"
            assert row["grasped_named_rate"] == float(grasps), kind
            assert row["done_before_grasp_rate"] == float(not grasps), kind
            assert row["grasped_other_rate"] == 0.0, kind
    else:
        assert seen["grasped_named_rate"] <= 0.2


def test_evaluator_says_which_object_was_grasped_first():
    """first_grasp: 'other' when the policy picks up an object the instruction does not name;
    done_before_grasp counts a "done" said before any grasp."""

    class PicksTheWrongOne(eval_sim.ExpertPolicy):
        def reset_episode(self, env, seed):
            super().reset_episode(env, seed)
            state, task = env.unwrapped.state, env.unwrapped.task
            other = next(n for n in state.names if n != task.obj)
            self._experts[id(env)]._plan = sim.expert.plan_for(state, world.Task("pick", other))

    result = eval_sim.evaluate(PicksTheWrongOne(), episodes=4, batch_size=2, log=None,
                               tasks=("pick",))
    assert [r["first_grasp"] for r in result["episodes"]] == ["other"] * 4
    assert result["grasped_other_rate"] == 1.0 and result["grasped_named_rate"] == 0.0
    # (The expert then sees its plan end unsolved, drops that one and picks the named one.)
    assert result["done_before_grasp_rate"] == 0.0

    class SaysDone(eval_sim.RandomPolicy):
        def act_batch(self, images, instructions):
            actions = super().act_batch(images, instructions)
            actions[:, 0] = 1.0
            return actions

    stopped = eval_sim.evaluate(SaysDone(seed=0), episodes=3, batch_size=3, log=None)
    assert stopped["done_before_grasp_rate"] == 1.0 and stopped["mean_episode_length"] == 1.0
    assert "grasped named" in eval_sim.format_summary(
        {"categories": {"seen": stopped}, "success": {"seen": 0.0}})


def test_heldout_vqa_is_scored_by_type():
    pairs = eval_sim.heldout_vqa(30, seed=1)
    assert len(pairs) == 30 and {qa.question_type for _, qa in pairs} >= {"locate"}
    assert pairs[0][1] == eval_sim.heldout_vqa(1, seed=1)[0][1]   # deterministic

    class Oracle:   # answers every question with its reference (asked in order): accuracy 1
        asked = 0

        def answer(self, images, questions):
            chunk = pairs[self.asked:self.asked + len(questions)]
            assert [qa.question for _, qa in chunk] == list(questions)
            self.asked += len(questions)
            return [qa.answers[-1] for _, qa in chunk]

    class Wrong:
        def answer(self, images, questions):
            return ["nothing" for _ in questions]

    assert eval_sim.evaluate_vqa(Oracle(), 30, seed=1)["vqa_accuracy"] == 1.0
    assert eval_sim.evaluate_vqa(Wrong(), 30, seed=1)["vqa_accuracy"] == 0.0
    with pytest.raises(ValueError, match="categories"):
        eval_sim.parse_categories(["seen", "moon"])
    assert eval_sim.parse_categories(["all"]) == list(world.EVAL_CATEGORIES)


def test_export_and_policy_keep_uri_paths(monkeypatch):
    """gs:// (any scheme://) export paths reach orbax unchanged, and the policy loads params,
    config, action statistics and tokenizer from them. TensorFlow's in-memory ram:// file
    system stands in for GCS; orbax (which has no ram:// backend) is replaced by a recorder."""
    saved = {}

    class RecordingCheckpointer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def save(self, path, tree):
            saved[path] = jax.tree.map(np.asarray, tree)
            tf.io.gfile.makedirs(path)

        def restore(self, path):
            return saved[path]

    import tensorflow as tf

    monkeypatch.setattr(checkpoints.ocp, "StandardCheckpointer", RecordingCheckpointer)
    config = tiny.get_config()
    bounds = actions_lib.ActionBounds(tuple(LOW), tuple(HIGH))
    out = "ram://bucket/exports/tiny"
    checkpoints.export(out, random_params(config), config, tokenizer_lib.default_model_path(),
                       None, bounds, dtype="float32")
    assert list(saved) == [out + "/params"]   # not <cwd>/ram:/bucket/...
    policy = policy_lib.Policy.from_export(out)
    assert policy.tokenizer.encode("pick up the red ball") == \
        tokenizer_lib.Tokenizer().encode("pick up the red ball")
    images, instructions = observations(2)
    assert policy.act_batch(images, instructions).shape == (2, 8)
