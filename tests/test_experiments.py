"""The co-fine-tuning experiment: stage configs, params loading for fine-tuning, and one
miniature end-to-end run (every stage trains, exports and is evaluated; results are written)."""

import json
import os

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import small_config, toy_cache  # noqa: F401  (a fixture)

from rt2_jax import checkpoints
from rt2_jax.experiments import cofinetune


def test_stage_configs(toy_cache):  # noqa: F811
    base = small_config(toy_cache)
    pre = cofinetune.stage_config(base, "pretrain", 0, 10)
    assert pre.data.sources.robot.weight == 0.0
    assert pre.data.sources.vqa.weight == pre.data.sources.captions.weight == 0.5
    co = cofinetune.stage_config(base, "cofinetune", 2, 7, 0.5, "/x/export")
    assert (co.seed, co.train.num_steps, co.train.init_from) == (2, 7, "/x/export")
    assert co.data.sources.robot.weight == 0.5 and co.data.sources.vqa.weight == 0.25
    robot = cofinetune.stage_config(base, "robot_only", 0, 7, 0.5, "/x/export")
    assert robot.data.sources.robot.weight == 1.0 and robot.data.sources.vqa.weight == 0.0
    scratch = cofinetune.stage_config(base, "scratch", 0, 7, 0.5, "/x/export")
    assert scratch.train.init_from == ""   # from random weights
    with pytest.raises(ValueError, match="unknown stage"):
        cofinetune.stage_config(base, "finetune", 0, 7)
    # Held-out evaluations spread over the stage, the last at its end (train.py evaluates at
    # every multiple of eval_every and at the last step).
    assert cofinetune.stage_config(base, "scratch", 0, 1500, evals=2).train.eval_every == 750
    assert cofinetune.stage_config(base, "scratch", 0, 1500, evals=3).train.eval_every == 500
    assert cofinetune.stage_config(base, "scratch", 0, 1500, evals=0).train.eval_every == 0
    with pytest.raises(ValueError, match="evals per stage"):
        cofinetune.stage_config(base, "scratch", 0, 7, evals=-1)
    assert base.train.init_from == ""   # the base config is not modified
    with pytest.raises(ValueError, match="arms must be some of"):   # before anything trains
        cofinetune.run(base, "/nonexistent", seeds=[0], pretrain_steps=1, finetune_steps=1,
                       robot_fraction=0.5, episodes=1, vqa_questions=0, arms=("finetune",))


def test_load_params_like_takes_matching_params_and_names_mismatches(tmp_path):
    mine = {"img": {"w": jax.numpy.zeros((2, 3))}, "encdec": {"b": jax.numpy.zeros((4,))}}
    theirs = {"img": {"w": np.ones((2, 3), np.float32)}, "encdec": {"b": np.ones((4,))}}
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(str(tmp_path / "params"), theirs)
    loaded = checkpoints.load_params_like(str(tmp_path), mine)
    assert float(loaded["img"]["w"].sum()) == 6 and float(loaded["encdec"]["b"].sum()) == 4
    only_img = checkpoints.load_params_like(str(tmp_path), mine, "^img/")
    assert float(only_img["img"]["w"].sum()) == 6 and float(only_img["encdec"]["b"].sum()) == 0
    bigger = {**mine, "img": {"w": jax.numpy.zeros((2, 5))}}
    with pytest.raises(ValueError, match=r"img/w: shape \(2, 3\) in the export, \(2, 5\)"):
        checkpoints.load_params_like(str(tmp_path), bigger)
    with pytest.raises(ValueError, match="matches no parameter"):
        checkpoints.load_params_like(str(tmp_path), mine, "^nothing")
    with pytest.raises(FileNotFoundError, match="init_from"):
        checkpoints.load_params_like(str(tmp_path / "missing"), mine)


def test_learning_curves_are_read_from_each_stage_and_tabled(tmp_path):
    stage = tmp_path / "cofinetune_seed0"
    stage.mkdir()
    rows = [{"step": 100, "loss": 3.0},
            {"step": 750, "eval/action_acc/dx": 0.68, "eval/locate_dist": 0.12},
            {"step": 1500, "eval/action_acc/dx": 0.9, "eval/vqa_exact_match": 0.3}]
    (stage / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + '\n{"step": 16')   # a line cut by a crash
    curves = cofinetune.curves(str(stage))
    assert curves == [{"step": 750, "action_acc/dx": 0.68, "locate_dist": 0.12},
                      {"step": 1500, "action_acc/dx": 0.9, "vqa_exact_match": 0.3}]
    assert cofinetune.curves(str(tmp_path / "missing")) == []
    md = cofinetune.markdown({}, 0.31, {"cofinetune_seed0": curves})
    assert "| cofinetune_seed0 | 750 | – | 0.680 | – | – | – | – | 0.120 |" in md
    assert "held-out VQA accuracy 0.310" in md


def test_miniature_experiment_end_to_end(toy_cache, tmp_path, monkeypatch):  # noqa: F811
    base = small_config(toy_cache, num_steps=3, checkpoint_every=3)
    lines = []
    results = cofinetune.run(base, str(tmp_path), seeds=[0], pretrain_steps=3,
                             finetune_steps=2, robot_fraction=0.5, episodes=1, vqa_questions=4,
                             max_episode_steps=3, evals_per_stage=0, log=lines.append)
    assert set(results["table"]) == set(cofinetune.ARMS)
    for arm in cofinetune.ARMS:
        row = results["table"][arm]
        assert set(row) == set(cofinetune.COLUMNS)
        assert all(0.0 <= cell["mean"] <= 1.0 and cell["n"] == 1 for cell in row.values())
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["table"] == results["table"]
    md = (tmp_path / "results.md").read_text()
    assert all(arm in md for arm in cofinetune.ARMS) and "vqa_accuracy" in md
    assert (tmp_path / "results.png").stat().st_size > 1000
    # Fine-tuned arms started from the pretrained export; scratch did not.
    for arm, expected in (("robot_only", True), ("cofinetune", True), ("scratch", False)):
        cfg = json.loads(open(os.path.join(tmp_path, f"{arm}_seed0", "export",
                                           "config.json")).read())
        assert bool(cfg["train"]["init_from"]) == expected
    assert all(set(run["expert_success"]) == set(run["solved_at_end"]) == set(
        cofinetune.COLUMNS[:4]) for arm in results["runs"].values() for run in arm.values())
    assert results["settings"]["max_episode_steps"] == 3
    # Rerunning resumes: every stage's export exists, nothing trains again, and the arms'
    # closed-loop results and the pretrained export's VQA are read back (eval.json,
    # vqa_eval.json) instead of evaluated again.
    from rt2_jax.tools import eval_sim

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was evaluated again")

    monkeypatch.setattr(eval_sim, "evaluate_all", refuse)
    monkeypatch.setattr(eval_sim, "evaluate_vqa", refuse)
    again = []
    rerun = cofinetune.run(base, str(tmp_path), seeds=[0], pretrain_steps=3, finetune_steps=2,
                           robot_fraction=0.5, episodes=1, vqa_questions=4,
                           max_episode_steps=3, evals_per_stage=0, log=again.append)
    assert sum("skipping training" in line for line in again) == 4
    assert rerun["runs"] == json.loads(json.dumps(results["runs"]))
    assert rerun["pretrain_vqa"] == json.loads(json.dumps(results["pretrain_vqa"]))


def test_scratch_arm_alone_trains_no_web_pretraining(toy_cache, tmp_path):  # noqa: F811
    base = small_config(toy_cache, num_steps=3, checkpoint_every=3)
    lines = []
    results = cofinetune.run(base, str(tmp_path), seeds=[0], pretrain_steps=3,
                             finetune_steps=2, robot_fraction=0.5, episodes=1, vqa_questions=4,
                             max_episode_steps=3, evals_per_stage=0, arms=("scratch",),
                             log=lines.append)
    assert not (tmp_path / "pretrain").exists()
    assert results["pretrain_vqa"] is None and "pretrain" not in results["curves"]
    assert set(results["table"]) == {"scratch"}
    assert "Web-pretrained" not in (tmp_path / "results.md").read_text()


def test_imitation_probe_reports_learning_and_restores_the_world():
    from configs import tiny
    from rt2_jax.experiments import imitation_probe
    from rt2_jax.sim import world

    reports = []
    before = world.OBJECTS_PER_SCENE
    last = imitation_probe.run(
        tiny.get_config(), tasks=["pick"], episodes=4, heldout_episodes=2, heldout_frames=16,
        steps=12, batch_size=8, log_every=6, eval_every=12, eval_episodes=2,
        max_episode_steps=3, camera="fixed", image_size=0, move_quantum=0.02, noise_std=0.0,
        objects=["1", "1"], seed=0, emit=reports.append, point_fraction=0.25,
        point_pretrain_steps=2)
    assert world.OBJECTS_PER_SCENE == before
    header, pretrain, first, second = reports
    assert pretrain["pretrain_step"] == 2 and set(pretrain["point_dist"]) == {"gripper", "object"}
    assert header["heldout_frames"] == 16
    # Label baselines of the held-out labels (what an image-blind model scores).
    for stats in header["labels"].values():
        assert 0 < stats["majority"] <= 1 and stats["entropy"] >= 0
        assert (stats["entropy"] == 0) == (stats["majority"] == 1)
    assert header["labels"]["terminate"]["majority"] < 1   # every episode ends with terminate
    assert (first["step"], second["step"]) == (6, 12)
    assert "success" not in first and last == {k: v for k, v in second.items() if k != "seconds"}
    # Pointing rows (2 of 8): held-out distance of the greedy point, in table units.
    assert set(second["point_dist"]) == {"gripper", "object"}
    assert all(0 <= v <= 2**0.5 for v in second["point_dist"].values())
    # Twelve steps of Adafactor at 3e-3 already move the held-out action loss down.
    assert sum(second["tf_ce"].values()) < sum(first["tf_ce"].values()) - 1.0
    assert set(second["success"]) == {"pick"} and 0 <= second["success"]["pick"] <= 1
    assert all(0 <= v <= 1 for v in second["decoded_acc"].values())
    assert second["solved_any_step"]["pick"] >= second["success"]["pick"]
    # Closed-loop agreement: 2 episodes of at most 3 steps, each step under one expert phase.
    agreement = second["closed_loop_agreement"]
    assert 2 <= sum(p["steps"] for p in agreement.values()) <= 6
    assert set(agreement) <= {"open", "rise", "above", "descend", "grasp", "lift", "done"}
    assert all(0 <= p[d] <= 1 for p in agreement.values() for d in imitation_probe.REPORTED_DIMS)
    with pytest.raises(ValueError, match="task 'fly'"):
        imitation_probe.run(tiny.get_config(), tasks=["fly"], episodes=1, heldout_episodes=1,
                            heldout_frames=1, steps=1, batch_size=1, log_every=1, eval_every=1,
                            eval_episodes=1, max_episode_steps=1, camera="fixed", image_size=0,
                            move_quantum=0.0, noise_std=0.0, objects=[], seed=0,
                            emit=reports.append)


def test_perception_robustness_sees_a_fixed_bias_more_than_random_noise():
    from rt2_jax.experiments import imitation_probe

    kw = dict(episodes=12, quantum=0.1, max_episode_steps=60)
    assert imitation_probe.perception_robustness("pick", 0.0, 0.0, **kw) == 1.0
    # Errors of 0.02 table units drawn anew each step average out; the same size fixed per
    # episode does not always (the world's own measurement: 100% vs 85% over 100 episodes).
    assert imitation_probe.perception_robustness("pick", 0.02, 0.0, **kw) == 1.0
    assert imitation_probe.perception_robustness("pick", 0.0, 0.15, **kw) <= 0.5
    with pytest.raises(ValueError, match="sigma and bias"):
        imitation_probe.perception_robustness("pick", -0.1, 0.0, **kw)


def test_imitation_probe_evaluates_once_per_sampling_temperature(tmp_path):
    """--eval_temperatures: one closed-loop report per temperature (0 = greedy); the decoded
    held-out accuracy is greedy and reported once. Perturbed expert data trains as usual, and
    so does a run whose keypoint head starts from a saved pixel policy's (--init_keypoints) or
    is first pretrained to locate the object and the gripper (--locate_pretrain_steps)."""
    from configs import tiny
    from rt2_jax.experiments import imitation_probe

    kw = dict(tasks=["pick"], episodes=2, heldout_episodes=1, heldout_frames=8, steps=2,
              batch_size=4, log_every=2, eval_every=2, eval_episodes=2, max_episode_steps=3,
              camera="fixed", image_size=0, move_quantum=0.1, noise_std=0.0, objects=["1", "1"],
              seed=0, emit=lambda record: None, grid=0.1)
    # With --eval_terminate_thresholds too: one closed-loop report per temperature and stopping
    # rule, all from one model.
    last = imitation_probe.run(tiny.get_config(), eval_temperatures=(0.0, 1.0),
                               eval_terminate_thresholds=(0.5, 0.01), perturb_prob=0.2, **kw)
    keys = {f"temperature_{t}_terminate_threshold_{th}" for t in ("0", "1")
            for th in ("0.5", "0.01")}
    assert {"decoded_acc", *keys} <= set(last)
    assert "success" not in last
    for key in keys:
        assert set(last[key]) == {"success", "solved_any_step", "closed_loop_agreement"}
        assert 0 <= last[key]["success"]["pick"] <= 1
        assert 2 <= sum(p["steps"] for p in last[key]["closed_loop_agreement"].values()) <= 6
    with pytest.raises(ValueError, match="eval_temperatures"):
        imitation_probe.run(tiny.get_config(), eval_temperatures=(-1.0,), **kw)
    with pytest.raises(ValueError, match="eval_terminate_thresholds"):
        imitation_probe.run(tiny.get_config(), eval_terminate_thresholds=(1.0,), **kw)
    # A saved pixel policy's keypoint head starts the image tower's (shapes checked on load;
    # the scores themselves in test_pixel_policy_keypoint_head_starts_a_vlm_image_tower).
    from rt2_jax.experiments import pixel_policy

    policy = pixel_policy.make_model()
    path = str(tmp_path / "head.npz")
    pixel_policy.save_params(policy.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3),
                                                                         np.uint8)), path)
    config = tiny.get_config()
    config.model.vit.keypoints = 16
    # ... and is then pretrained to locate (--locate_pretrain_steps), which reports its held-out
    # distances, and keeps the localization loss on during robot training
    # (--config.train.locate_weight: robot frames and pointing rows carry their points); one run
    # for all three, as the probe allows them together, on a locked config as absl's config
    # flags hand it over.
    config.train.locate_weight = 1.0
    config.lock()
    records = []
    last = imitation_probe.run(config, init_keypoints=path, locate_pretrain_steps=2,
                               **{**kw, "emit": records.append, "point_fraction": 0.5})
    assert 0 <= last["success"]["pick"] <= 1
    located = [r for r in records if "locate_step" in r]
    assert [r["locate_step"] for r in located] == [2]
    assert set(located[0]["locate_dist"]) == {"object", "gripper"}
    # Robot training then reports the same distances beside the action metrics.
    assert set(last["locate_dist"]) == {"object", "gripper"}
    assert set(last["grounding"]) == {"named_nearest", "rule_dx", "rule_dy"}
    assert next(r["step"] for r in records if "step" in r) == 0   # the starting point
    # Robot frames and pointing rows both carried a point (2 + 2 of the batch of 4).
    assert [r["batch_locate_rows"] for r in records if "batch_locate_rows" in r] == [4]
    # --locate_robot_frames=False: only the pointing rows carry points (RT-2's setting:
    # grounding from web data alone); with --locate_gripper_points=False only those asking for
    # the object. Of 8 robot rows and 8 pointing rows (random subjects), some but not all 8
    # pointing rows count, and no robot row. (With --terminate_repeats=2 each solved episode
    # adds two frames labelled "done", training and held-out alike.)
    frames = next(r["frames"] for r in records if "frames" in r)
    records.clear()
    imitation_probe.run(config, locate_robot_frames=False, locate_gripper_points=False,
                        terminate_repeats=2,
                        **{**kw, "emit": records.append, "point_fraction": 0.5, "steps": 1,
                           "batch_size": 16, "log_every": 1, "eval_every": 1,
                           "eval_episodes": 1})
    counted = [r["batch_locate_rows"] for r in records if "batch_locate_rows" in r]
    assert len(counted) == 1 and 0 < counted[0] < 8
    assert next(r["frames"] for r in records if "frames" in r) == frames + 2 * kw["episodes"]
    # Keypoint 0 is also scored under the pointing prompts (how much of pointing carries over).
    pointed = next(r["point_keypoint_dist"] for r in records if "point_keypoint_dist" in r)
    assert set(pointed) == {"gripper", "object"} and all(0 <= d < 2 for d in pointed.values())
    # Without pointing rows that is refused rather than training nothing.
    with pytest.raises(ValueError, match="point_fraction > 0 or point_pretrain_steps"):
        imitation_probe.run(config, locate_robot_frames=False, **kw)
    with pytest.raises(ValueError, match="terminate_repeats >= 0"):
        imitation_probe.run(config, terminate_repeats=-1, **kw)
    config.model.vit.keypoints = 1
    with pytest.raises(ValueError, match="keypoints >= 2"):
        imitation_probe.run(config, **kw)
    config.train.locate_weight = 0.0
    config.model.vit.keypoints = 8
    with pytest.raises(ValueError, match=r"vit\.keypoints=16"):
        imitation_probe.run(config, init_keypoints=path, **kw)
    with pytest.raises(ValueError, match="fixed camera"):
        imitation_probe.run(config, locate_pretrain_steps=2, **{**kw, "camera": "gripper"})


def test_grounding_reads_the_named_object_and_the_rule_off_the_keypoints():
    """locate.grounding: the object keypoint nearest the named object (not a distractor), and
    the sign rule (object minus gripper, 0 within half a step) against the expert's dx, dy."""
    from rt2_jax.experiments import locate

    scenes = [np.array([[0.2, 0.2], [0.8, 0.8]]), np.array([[0.5, 0.1], [0.5, 0.9]])]
    named = np.array([0, 1])
    # Frame 0: object keypoint on the named object (0.2, 0.2), gripper at (0.5, 0.2): the rule
    # says dx = -1, dy = 0. Frame 1: object keypoint on the distractor (0.5, 0.1), gripper at
    # (0.5, 0.5): the rule says dx = 0, dy = -1 where the expert (going to (0.5, 0.9)) says +1.
    obj = np.array([[0.2, 0.2], [0.52, 0.1]])
    grip = np.array([[0.5, 0.2], [0.5, 0.5]])
    predicted = np.stack([locate.table_to_keypoint(obj), locate.table_to_keypoint(grip)], 1)
    acts = np.zeros((2, 8))
    acts[0, 1], acts[1, 2] = -0.1, 0.1
    got = locate.grounding(predicted, scenes, named, acts, 0.1)
    assert got == {"named_nearest": 0.5, "rule_dx": 1.0, "rule_dy": 0.5}
    # With the true positions the rule reads both frames, and without whole steps it is not
    # reported.
    true_obj = np.array([s[k] for s, k in zip(scenes, named, strict=True)])
    exact = np.stack([locate.table_to_keypoint(true_obj), locate.table_to_keypoint(grip)], 1)
    assert locate.grounding(exact, scenes, named, acts, 0.1) == {
        "named_nearest": 1.0, "rule_dx": 1.0, "rule_dy": 1.0}
    assert set(locate.grounding(exact, scenes, named, acts, 0.0)) == {"named_nearest"}
    with pytest.raises(ValueError, match="one scene"):
        locate.grounding(exact, scenes[:1], named, acts, 0.1)


def test_pointing_examples_ask_for_the_gripper_and_the_task_object():
    from rt2_jax import tokenizer as tokenizer_lib
    from rt2_jax.experiments import imitation_probe
    from rt2_jax.sim import vqa

    tok = tokenizer_lib.Tokenizer()
    points = [(np.array([0.1, 0.9]), np.array([0.5, 0.25]), "red block"),
              (np.array([0.999, 0.0]), np.array([0.0, 1.0]), "blue ball")]
    tokens, mask, targets = imitation_probe.pointing_examples(tok, points, 16, 9)
    assert tokens.shape == mask.shape == (4, 16) and targets.shape == (4, 9)
    prompts = [tok.decode([int(i) for i in row if i]) for row in tokens]
    assert prompts == ["point to the gripper", "point to the red block",
                       "point to the gripper", "point to the blue ball"]
    answers = [tok.decode([int(i) for i in row if i > 1]) for row in targets]
    assert answers == ["25 25", "128 192", "255 255", "0 0"]
    # Every answer is "x y" then EOS, and each parses back to within a grid cell of the point.
    assert all(list(row[2:4]) == [tok.eos_id, 0] for row in targets)
    pairs = zip(answers[0::2], answers[1::2], strict=True)
    for (gripper, obj, _), (g, o) in zip(points, pairs, strict=True):
        assert np.abs(vqa.parse_location(g) - gripper).max() <= 1 / 256
        assert np.abs(vqa.parse_location(o) - obj).max() <= 1 / 256


def test_expert_robustness_check_sees_harmful_errors():
    from rt2_jax.experiments import imitation_probe

    kw = dict(episodes=4, quantum=0.02, max_episode_steps=40)
    assert imitation_probe.expert_robustness("pick", 0, 0, 0, **kw) == 1.0
    # The gripper flipped on most steps drops what it grasps: no pick succeeds.
    assert imitation_probe.expert_robustness("pick", 0, 0, 0.9, **kw) == 0.0
    with pytest.raises(ValueError, match="quantum > 0"):
        imitation_probe.expert_robustness("pick", 0, 0, 0, episodes=1, quantum=0.0,
                                          max_episode_steps=5)


def test_pixel_policy_labels_round_trip_and_training_reports():
    """The reference CNN policy: whole-step actions <-> class ids exactly, refuses labels that
    are not whole steps, and a few training steps report held-out accuracy per dim and a
    closed-loop success rate in [0, 1]."""
    from rt2_jax.experiments import pixel_policy

    q = 0.1
    actions = np.zeros((4, 8), np.float32)
    actions[:, 1:4] = [[q, 0, -q], [0, 0, 0], [-q, q, q], [0, -q, 0]]
    actions[[0, 2], 7] = 1.0
    actions[3, 0] = 1.0
    classes = pixel_policy.labels(actions, q)
    assert classes.tolist()[0] == [0, 2, 1, 0, 1]
    np.testing.assert_allclose(pixel_policy.to_actions(classes, q), actions, atol=1e-6)
    with pytest.raises(ValueError, match="whole-step"):
        pixel_policy.labels(actions * 0.5, q)
    reports = []
    last = pixel_policy.run(
        tasks=["pick"], episodes=3, heldout_episodes=1, steps=4, batch_size=8,
        learning_rate=1e-3, log_every=2, eval_every=4, eval_episodes=2, max_episode_steps=3,
        image_size=64, move_quantum=q, noise_std=0.0, grid=0.1, objects=["1", "1"], seed=0,
        emit=reports.append, shift_px=2)
    header, first, second = reports
    assert set(header["majority"]) == set(pixel_policy.DIMS)
    assert first["step"] == 2 and "success" not in first
    assert set(second["heldout_acc"]) == set(pixel_policy.DIMS)
    assert 0 <= last["success"]["pick"] <= 1 and last["step"] == 4
    with pytest.raises(ValueError, match="move_quantum"):
        pixel_policy.run(tasks=["pick"], episodes=2, heldout_episodes=1, steps=1, batch_size=1,
                         learning_rate=1e-3, log_every=1, eval_every=1, eval_episodes=1,
                         max_episode_steps=1, image_size=64, move_quantum=0.0, noise_std=0.0,
                         grid=0.0, objects=[], seed=0, emit=reports.append)
    with pytest.raises(ValueError, match="softmax_scale"):
        pixel_policy.run(tasks=["pick"], episodes=2, heldout_episodes=1, steps=1, batch_size=1,
                         learning_rate=1e-3, log_every=1, eval_every=1, eval_episodes=1,
                         max_episode_steps=1, image_size=64, move_quantum=q, noise_std=0.0,
                         grid=0.0, objects=[], seed=0, emit=reports.append, softmax_scale=0.0)


@given(st.integers(0, 3), st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_random_shift_translates_every_image_and_keeps_offsets(max_px, seed):
    """Each image moves by its own (dx, dy) within max_px, border repeating the edge: two marked
    pixels keep their offset (what an action depends on), and nothing else changes."""
    from rt2_jax.experiments import pixel_policy

    rng = np.random.default_rng(seed)
    images = np.zeros((5, 16, 16, 3), np.uint8)
    images[:, 6, 7] = 200
    images[:, 9, 4] = 100
    out = pixel_policy.random_shift(images, max_px, rng)
    assert out.shape == images.shape and out.dtype == np.uint8
    for img in out:
        (r1, c1), (r2, c2) = np.argwhere(img[..., 0] == 200)[0], np.argwhere(img[..., 0] == 100)[0]
        assert (r2 - r1, c2 - c1) == (3, -3)
        assert abs(r1 - 6) <= max_px and abs(c1 - 7) <= max_px
        assert (img > 0).sum() == 6   # both marks, 3 channels each; the zero border repeats
    if max_px == 0:
        np.testing.assert_array_equal(out, images)


def test_pixel_policy_keypoint_head_starts_a_vlm_image_tower(tmp_path):
    """A saved pixel policy's conv keypoint head, loaded into a VLM image tower with 16
    keypoints, gives the same keypoint scores on the same image (the policy's score layer times
    its learned inverse temperature); a VLM with another keypoint count is refused."""
    from configs import tiny
    from rt2_jax.experiments import pixel_policy
    from rt2_jax.models import params as params_lib
    from rt2_jax.models.vlm import VLM

    policy = pixel_policy.make_model(softmax_scale=3.0)
    image = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    variables = policy.init(jax.random.PRNGKey(1), image)
    path = str(tmp_path / "policy.npz")
    pixel_policy.save_params(variables, path)
    _, inter = policy.apply(variables, image, capture_intermediates=True)
    want = np.asarray(inter["intermediates"]["Dense_0"]["__call__"][0]) * 3.0

    config = tiny.get_config()
    config.model.vit.keypoints = 16
    model = VLM.from_config(config)
    tokens = np.ones((2, config.max_prompt_len), np.int32)
    mask = np.ones_like(tokens, bool)
    targets = np.ones((2, 9), np.int32)
    params = params_lib.unbox(model.init(jax.random.PRNGKey(0), image, tokens, mask,
                                         targets))["params"]
    img = params_lib.flatten(params["img"])
    for key, value in params_lib.flatten(pixel_policy.keypoint_head(path, 16)).items():
        assert img[key].shape == np.shape(value), key
    params = {**params, "img": pixel_policy.with_keypoint_head(params["img"], path, 16)}
    _, state = model.apply({"params": params}, image, method=lambda m, im: m.img(im),
                           mutable=["intermediates"])
    got = np.asarray(state["intermediates"]["img"]["keypoint_logits"][0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"vit\.keypoints=16"):
        pixel_policy.keypoint_head(path, 8)


def test_locate_targets_are_where_the_renderer_draws_things():
    """Keypoint coordinates of a table point = the keypoint grid's (u, v) of the pixel the
    renderer draws it at: the object's drawn colour centroid and the target agree to a pixel."""
    from rt2_jax import sim
    from rt2_jax.experiments import imitation_probe, locate
    from rt2_jax.models import vit

    size = 64
    with imitation_probe.probe_world(["pick"], ["1", "1"]):
        env = sim.TabletopEnv(image_size=size)
        expert = sim.ScriptedExpert(env, noise_std=0.0, move_quantum=0.1)
        points = []
        images, _, _ = imitation_probe.collect(env, expert, ["pick"], 1, 0, points)
    targets = locate.locate_targets(points)
    assert targets.shape == (len(images), 2, 2) and targets.dtype == np.float32
    # The first frame: the object sits on the table, the gripper high above it elsewhere.
    frame = images[0].astype(np.int32)
    grid = vit.keypoint_grid(size, size).reshape(size, size, 2)
    obj_xy = points[0][1]
    # Pixels within the object's radius of its target that differ from the table around it.
    uv = targets[0, locate.OBJECT_KEYPOINT]
    near = np.linalg.norm(grid - uv, axis=-1) < 2 * sim.world.OBJECT_RADIUS * 0.8
    background = np.median(frame[~near].reshape(-1, 3), axis=0)
    drawn = near & (np.abs(frame - background).sum(-1) > 60)
    assert drawn.sum() > 5, "the object should be drawn around its target"
    centroid = grid[drawn].mean(0)
    assert np.abs(centroid - uv).max() < 2.5 * 2 / size, (centroid, uv, obj_xy)
    np.testing.assert_allclose(locate.table_to_keypoint([[0, 0], [1, 1], [0.5, 0.25]]),
                               [[-1, -1], [1, 1], [0, -0.5]])
    with pytest.raises(ValueError, match="at least one"):
        locate.locate_targets([])


def test_locate_pretraining_moves_only_the_image_tower_and_prompt_embeddings():
    """A few steps of localization regression bring the two keypoints towards their targets
    (loss falls on the training batch) and change the image tower and the token embeddings
    only; a config without two keypoints or a moving camera is refused."""
    from configs import tiny
    from rt2_jax import sim, train_state
    from rt2_jax import tokenizer as tokenizer_lib
    from rt2_jax.experiments import imitation_probe, locate
    from rt2_jax.preprocessing import encode_robot_prompts

    config = tiny.get_config()
    config.model.vit.keypoints = 4
    config.model.vit.keypoint_query = True
    with imitation_probe.probe_world(["pick"], ["2", "3"]):
        env = sim.TabletopEnv(image_size=64)
        expert = sim.ScriptedExpert(env, noise_std=0.0, move_quantum=0.1)
        points = []
        images, instructions, _ = imitation_probe.collect(env, expert, ["pick"], 2, 0, points)
    images, points, instructions = images[:8], points[:8], instructions[:8]
    tokens, mask = encode_robot_prompts(tokenizer_lib.Tokenizer(), instructions,
                                        config.max_prompt_len)
    targets = locate.locate_targets(points)
    setup = train_state.make_setup(config)
    params = train_state.init_state(setup, 0).params
    _, _, predict = locate.make_fns(setup.model, 1e-3)
    before = float(np.mean(np.sum((np.asarray(predict(params, images, tokens, mask))
                                   - targets) ** 2, -1)))
    reports = []
    trained = locate.pretrain(setup.model, params, images=images, tokens=tokens, mask=mask,
                              targets=targets, heldout=(images, tokens, mask, targets),
                              steps=30, batch_size=8, learning_rate=3e-3, seed=0, log_every=15,
                              emit=reports.append)
    assert [r["locate_step"] for r in reports] == [15, 30]
    after = float(np.mean(np.sum((np.asarray(predict(trained, images, tokens, mask))
                                  - targets) ** 2, -1)))
    assert after < 0.7 * before, (before, after)
    changed = {"/".join(str(getattr(k, "key", k)) for k in path)
               for path, a in jax.tree_util.tree_leaves_with_path(params)
               if not np.array_equal(a, _leaf(trained, path))}
    assert any(name.startswith("img/keypoint_") for name in changed)
    assert all(name.startswith("img/") or "embed" in name for name in changed), changed
    config.model.vit.keypoints = 1
    with pytest.raises(ValueError, match="keypoints >= 2"):
        locate.check_model(config)
    config.model.vit.keypoints = 4
    with pytest.raises(ValueError, match="fixed camera"):
        locate.check_model(config, "gripper")


def _leaf(tree, path):
    for key in path:
        tree = tree[getattr(key, "key", key)]
    return tree


def test_stages_run_in_worker_processes_and_are_read_back(toy_cache, tmp_path):  # noqa: F811
    base = small_config(toy_cache, num_steps=3, checkpoint_every=3)
    lines = []
    kw = dict(seeds=[0], pretrain_steps=3, finetune_steps=2, robot_fraction=0.5, episodes=1,
              vqa_questions=4, max_episode_steps=3, evals_per_stage=0,
              arms=("robot_only", "scratch"))
    results = cofinetune.run(base, str(tmp_path), jobs=2, log=lines.append, **kw)
    assert sum("queued for a worker process" in line for line in lines) == 2
    assert sum("trained and evaluated in" in line for line in lines) == 2
    # Each stage trained in its worker (its output in its own log), and the table was made
    # from what the workers left: the exports and their kept closed-loop results.
    for arm in ("robot_only", "scratch"):
        assert "trained 2 steps" in (tmp_path / f"{arm}_seed0.log").read_text()
        assert (tmp_path / f"{arm}_seed0" / "eval.json").exists()
    assert sorted(os.path.basename(line.split(":")[0]) for line in lines
                  if "skipping training" in line) == ["robot_only_seed0", "scratch_seed0"]
    assert set(results["table"]) == {"robot_only", "scratch"}
    cfg = json.loads((tmp_path / "robot_only_seed0" / "export" / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(tmp_path / "pretrain" / "export")
    # Nothing left to do: a rerun with jobs starts no worker.
    again = []
    cofinetune.run(base, str(tmp_path), jobs=2, log=again.append, **kw)
    assert not any("queued for a worker" in line for line in again)
    # A stage that fails in its worker is named, with its log, after the others finished.
    bad = cofinetune.stage_config(base, "scratch", 1, 2, evals=0)
    bad.train.optimizer = "no_such_optimizer"
    good = cofinetune.stage_config(base, "scratch", 2, 2, evals=0)
    eval_args = (1, 0, 0, 3)
    with pytest.raises(RuntimeError, match=r"1 of 2 stages failed: bad \(.*no_such_optimizer"
                                           r".*bad_stage\.log"):
        cofinetune.run_stages_in_parallel(
            [("bad", bad, str(tmp_path / "bad_stage"), eval_args),
             ("good", good, str(tmp_path / "good_stage"), eval_args)], 2, lambda line: None)
    assert (tmp_path / "good_stage" / "eval.json").exists()
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1"):
        cofinetune.run(base, str(tmp_path), jobs=0, **kw)


def test_last_step_reads_a_stage_log_tail(tmp_path):
    log = tmp_path / "stage.log"
    assert cofinetune.last_step(str(log)) is None            # not written yet
    log.write_text("Mesh {'data': 1}\nInitialized 1 parameters; training 6000 steps.\n")
    assert cofinetune.last_step(str(log)) is None            # before the first step line
    log.write_text(log.read_text() + "step 100/6000 | loss 5.2 | eta_min 40\n"
                   + "x" * 500 + "\nstep 200/6000 | loss 4.1\nevaluating step 200\n")
    assert cofinetune.last_step(str(log)) == "200/6000"
    assert cofinetune.last_step(str(log), tail_bytes=60) == "200/6000"
    assert cofinetune.last_step(str(log), tail_bytes=20) is None   # the line is cut off
