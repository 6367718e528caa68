"""The toy-world TFDS datasets: layout, features, content, held-out split, caching, atomicity."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.builders import toy_world
from rt2_jax import sim
from rt2_jax.sim import vqa, world

EPISODES, SCENES = 6, 20


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def paths(cache):
    return toy_world.ensure_toy_world(cache, episodes=EPISODES, vqa_scenes=SCENES, seed=0)


def _load(path, split):
    return list(tfds.as_numpy(tfds.builder_from_directory(path).as_dataset(split=split)))


def test_datasets_load_from_directory_without_this_module(paths):
    # A fresh interpreter that never imports rt2_jax or data_pipelines reads all three.
    code = (
        "import json, sys\n"
        "import tensorflow_datasets as tfds\n"
        "out = {}\n"
        f"for kind, path in {json.dumps({k: paths[k] for k in ('robot', 'vqa', 'captions')})}"
        ".items():\n"
        "    b = tfds.builder_from_directory(path)\n"
        "    out[kind] = {s: b.info.splits[s].num_examples for s in ('train', 'val')}\n"
        "assert not [m for m in sys.modules if m.startswith(('rt2_jax', 'data_pipelines'))]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(paths["root"]).parent)
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["robot"] == {"train": 5, "val": 1}
    assert counts["vqa"] == {"train": 18 * (3 + 2), "val": 2 * (3 + 2)}   # + 2 pointing
    assert counts["captions"] == {"train": 18, "val": 2}


def test_robot_features_mirror_fractal(paths):
    features = tfds.builder_from_directory(paths["robot"]).info.features
    steps = features["steps"]
    assert steps["observation"]["image"].shape == (128, 128, 3)
    assert steps["observation"]["natural_language_instruction"].dtype == np.object_
    action = steps["action"]
    assert {k: (action[k].shape, action[k].dtype) for k in action.keys()} == {
        "world_vector": ((3,), np.float32), "rotation_delta": ((3,), np.float32),
        "gripper_closedness_action": ((1,), np.float32), "terminate_episode": ((3,), np.int32)}
    assert {"is_first", "is_last", "is_terminal", "reward"} <= set(steps.keys())
    assert set(features["episode_metadata"].keys()) == {
        "task", "instruction", "seed", "objects", "background", "cards", "success"}


def test_robot_episodes_content_and_replay(paths):
    episodes = _load(paths["robot"], "train") + _load(paths["robot"], "val")
    assert len(episodes) == EPISODES
    params = toy_world.GenerationParams(episodes=EPISODES, vqa_scenes=SCENES)
    for ep in episodes:
        steps = list(ep["steps"])
        n = len(steps)
        assert [s["is_first"] for s in steps] == [True] + [False] * (n - 1)
        assert [s["is_last"] for s in steps] == [False] * (n - 1) + [True]
        assert steps[-1]["is_terminal"] and steps[-1]["reward"] == 1.0
        # The last terminate_repeats + 1 steps (solved frames) are labelled terminate.
        terminate = np.stack([s["action"]["terminate_episode"] for s in steps])
        done = n - 1 - params.terminate_repeats
        np.testing.assert_array_equal(terminate[:done], [toy_world.CONTINUE] * done)
        np.testing.assert_array_equal(terminate[done:], [toy_world.TERMINATE] * (n - done))
        meta = ep["episode_metadata"]
        assert steps[0]["observation"]["natural_language_instruction"] == meta["instruction"]
        # Replaying the recorded seed reproduces every image and action bit for bit.
        env = sim.TabletopEnv()
        expert = toy_world.make_expert(env, params)
        replay = sim.rollout(env, expert, int(meta["seed"]))
        assert replay.task.instruction == meta["instruction"].decode()
        np.testing.assert_array_equal(
            replay.images, np.stack([s["observation"]["image"] for s in steps]))
        actions = np.stack([np.concatenate([[s["action"]["terminate_episode"][0]],
                                            s["action"]["world_vector"],
                                            s["action"]["rotation_delta"],
                                            s["action"]["gripper_closedness_action"]])
                            for s in steps]).astype(np.float32)
        # Steps record the plan's intended action (labels="intended", the default): no noise.
        np.testing.assert_array_equal(replay.intended_actions, actions)
        assert not np.array_equal(replay.actions, actions)   # what ran was noisy


def test_held_out_only_in_vqa(paths):
    held = world.DEFAULT_HELD_OUT
    robot = _load(paths["robot"], "train") + _load(paths["robot"], "val")
    for ep in robot:
        names = {o.decode() for o in ep["episode_metadata"]["objects"]}
        assert not names & set(held.objects)
        assert ep["episode_metadata"]["background"].decode() not in held.backgrounds
        instruction = ep["episode_metadata"]["instruction"].decode()
        assert not any(h in instruction for h in held.objects)
        cards = {c.decode() for c in ep["episode_metadata"]["cards"]}
        assert not cards & set(held.symbols)
        assert not set(instruction.split()) & set(held.symbols)
    vqa = _load(paths["vqa"], "train") + _load(paths["vqa"], "val")
    vqa_objects = {o.decode() for ex in vqa for o in ex["objects"]}
    assert set(held.objects) & vqa_objects
    assert {ex["background"].decode() for ex in vqa} & set(held.backgrounds)
    assert any(h in ex["question"].decode() for ex in vqa for h in held.objects)
    captions = _load(paths["captions"], "train")
    assert any(h in ex["caption"].decode() for ex in captions for h in held.objects)


def test_card_cover_prob_changes_web_scenes_only():
    """card_cover_prob draws the web scenes differently and leaves every robot episode as it was
    (episodes come from their own seed stream): a robot-only or from-scratch run trains on the
    same episodes with or without covered cards, only its web-pretrained start differs."""
    plain = toy_world.GenerationParams(card_half=0.11, tasks=("pick", "place_on_card"))
    covered = dataclasses.replace(plain, card_cover_prob=1.0)
    env = sim.TabletopEnv()
    for index in range(4):
        a = toy_world.expert_episode(index, plain, env, toy_world.make_expert(env, plain))
        b = toy_world.expert_episode(index, covered, env, toy_world.make_expert(env, covered))
        assert a.task.instruction == b.task.instruction
        np.testing.assert_array_equal(np.stack(a.images), np.stack(b.images))
        np.testing.assert_array_equal(np.stack(a.intended_actions), np.stack(b.intended_actions))
    moved = sum(toy_world.scene(index, plain)[1] != toy_world.scene(index, covered)[1]
                for index in range(12))
    assert moved > 0   # the web scenes with a card do change


def test_vqa_and_caption_examples(paths):
    train, val = _load(paths["vqa"], "train"), _load(paths["vqa"], "val")
    assert {ex["scene_id"] for ex in train}.isdisjoint({ex["scene_id"] for ex in val})
    for ex in train + val:
        assert ex["image"].shape == (128, 128, 3) and ex["image"].dtype == np.uint8
        assert len(ex["answers"]) >= 1
        assert all(0 < len(a.decode().split()) <= 3 for a in ex["answers"])
        if ex["question_type"] == b"locate":   # a point on the image grid, on its subject
            assert vqa.parse_location(ex["answers"][0].decode()) is not None
        else:
            assert ex["question"].decode().endswith("?")
    types = [ex["question_type"] for ex in train]
    assert types.count(b"locate") == 2 * len({ex["scene_id"] for ex in train})
    captions = {ex["scene_id"]: ex for ex in _load(paths["captions"], "train")}
    for ex in train:   # same scene, same image in both datasets
        np.testing.assert_array_equal(ex["image"], captions[ex["scene_id"]]["image"])


def test_cache_reuse_new_key_and_atomic_failure(paths, cache, monkeypatch):
    # Same parameters: returned from the cache, nothing rebuilt.
    def must_not_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached dataset")

    monkeypatch.setattr(toy_world, "_build_into", must_not_build)
    again = toy_world.ensure_toy_world(cache, episodes=EPISODES, vqa_scenes=SCENES, seed=0)
    assert again == paths
    monkeypatch.undo()

    # A crash while writing the last dataset leaves no directory that looks complete.
    def broken_caption(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(toy_world.vqa, "caption", broken_caption)
    with pytest.raises(RuntimeError, match="simulated crash"):
        toy_world.ensure_toy_world(cache, episodes=3, vqa_scenes=4, seed=0)
    monkeypatch.undo()
    assert sorted(p.name for p in (cache / "toy_world").iterdir()) == [Path(paths["root"]).name]

    # Other parameters: a separate directory, built now.
    other = toy_world.ensure_toy_world(cache, episodes=3, vqa_scenes=4, seed=0)
    assert other["root"] != paths["root"]
    assert tfds.builder_from_directory(other["robot"]).info.splits["train"].num_examples == 2
    stored = json.loads((Path(other["root"]) / toy_world.PARAMS_FILE).read_text())
    assert stored["episodes"] == 3 and stored["held_out"]["backgrounds"] == ["marble"]


def test_default_cache_dir_and_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("RT2_JAX_CACHE", str(tmp_path))
    assert toy_world.default_cache_dir() == tmp_path
    with pytest.raises(ValueError, match="episodes"):
        toy_world.GenerationParams(episodes=1)
    with pytest.raises(ValueError, match="terminate_repeats"):
        toy_world.GenerationParams(terminate_repeats=-1)
    with pytest.raises(ValueError, match="camera"):
        toy_world.GenerationParams(camera="wrist")
    with pytest.raises(ValueError, match="move_quantum"):
        toy_world.GenerationParams(move_quantum=0.5)
    with pytest.raises(ValueError, match="grid"):
        toy_world.GenerationParams(grid=0.5)
    assert (toy_world.GenerationParams(camera="gripper").cache_key()
            != toy_world.GenerationParams().cache_key())
    with pytest.raises(ValueError, match="not task kinds"):
        toy_world.GenerationParams(tasks=("pick", "fly"))
    with pytest.raises(TypeError, match="sequence of task kinds"):
        toy_world.GenerationParams(tasks="pick")
    # Data generated before `tasks` existed keeps its cache key; a task list changes it.
    assert "tasks" not in toy_world.GenerationParams().to_json()
    picks = toy_world.GenerationParams(tasks=["pick"])
    assert picks.tasks == ("pick",)
    assert picks.cache_key() != toy_world.GenerationParams().cache_key()
    assert toy_world.GenerationParams.from_json(picks.to_json()) == picks
    # Likewise for the object-and-card pointing questions (off by default).
    assert "locate_pairs_per_scene" not in toy_world.GenerationParams().to_json()
    pairs = toy_world.GenerationParams(locate_pairs_per_scene=1)
    assert pairs.cache_key() != toy_world.GenerationParams().cache_key()
    assert toy_world.GenerationParams.from_json(pairs.to_json()) == pairs
    with pytest.raises(ValueError, match="locate_pairs_per_scene"):
        toy_world.GenerationParams(locate_pairs_per_scene=-1)
    # And for the cards' size: the default keeps the old key, larger cards are other data.
    assert "card_half" not in toy_world.GenerationParams().to_json()
    big = toy_world.GenerationParams(card_half=0.11)
    assert big.cache_key() != toy_world.GenerationParams().cache_key()
    assert toy_world.GenerationParams.from_json(big.to_json()) == big
    with pytest.raises(ValueError, match="card_half"):
        toy_world.GenerationParams(card_half=0.3)
    assert "card_cover_prob" not in toy_world.GenerationParams().to_json()
    covered = toy_world.GenerationParams(card_cover_prob=0.3)
    assert covered.cache_key() != toy_world.GenerationParams().cache_key()
    assert toy_world.GenerationParams.from_json(covered.to_json()) == covered
    with pytest.raises(ValueError, match="card_cover_prob"):
        toy_world.GenerationParams(card_cover_prob=2.0)
    assert "retreat_z" not in toy_world.GenerationParams().to_json()
    high = toy_world.GenerationParams(retreat_z=0.4)
    assert high.cache_key() != toy_world.GenerationParams().cache_key()
    assert toy_world.GenerationParams.from_json(high.to_json()) == high
    assert toy_world.make_expert(sim.TabletopEnv(), high).retreat_z == 0.4
    with pytest.raises(ValueError, match="retreat_z"):
        toy_world.GenerationParams(retreat_z=0.5)
    assert "release_z" not in toy_world.GenerationParams().to_json()
    dropped = toy_world.GenerationParams(release_z=0.3, retreat_z=0.4)
    assert dropped.cache_key() not in (high.cache_key(), toy_world.GenerationParams().cache_key())
    assert toy_world.GenerationParams.from_json(dropped.to_json()) == dropped
    assert toy_world.make_expert(sim.TabletopEnv(), dropped).release_z == 0.3
    with pytest.raises(ValueError, match="retreat_z"):   # the default retreat is below 0.3
        toy_world.GenerationParams(release_z=0.3)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="occupied"):
        toy_world.generate(tmp_path / "occupied", toy_world.GenerationParams(episodes=2,
                                                                            vqa_scenes=2))


def test_command_line(tmp_path, capsys):
    toy_world.main(["--out", str(tmp_path / "data"), "--episodes", "2", "--vqa_scenes", "2",
                    "--seed", "5", "--held_out_objects", "red ball", "--held_out_backgrounds",
                    "wood", "--noise_std", "0.01", "--gripper_flip_prob", "0.05",
                    "--terminate_repeats", "2", "--camera", "gripper",
                    "--move_quantum", "0.02", "--grid", "0.1", "--tasks", "move_near",
                    "--pause_prob", "0"])
    printed = capsys.readouterr().out
    robot_dir = tmp_path / "data" / "toy_world_robot" / toy_world.FORMAT_VERSION
    robot = tfds.builder_from_directory(str(robot_dir))
    assert robot.info.splits["val"].num_examples == 1
    assert f"robot: {tmp_path / 'data'}" in printed
    params = json.loads((tmp_path / "data" / toy_world.PARAMS_FILE).read_text())
    assert params["seed"] == 5 and params["held_out"]["objects"] == ["red ball"]
    assert (params["noise_std"], params["gripper_flip_prob"], params["terminate_repeats"]) == (
        0.01, 0.05, 2)
    assert params["camera"] == "gripper" and params["move_quantum"] == 0.02
    assert params["grid"] == 0.1 and params["tasks"] == ["move_near"]
    assert params["pause_prob"] == 0
    for ep in _load(str(robot_dir), "train"):   # the 2 extra solved steps are labelled terminate
        assert ep["episode_metadata"]["task"] == b"move_near"
        terminate = [s["action"]["terminate_episode"][0] for s in ep["steps"]]
        assert terminate[-3:] == [1, 1, 1] and not any(terminate[:-3])
        open_frames = 0
        for step in ep["steps"]:   # the gripper camera: the gripper's body is at the centre
            image = np.asarray(step["observation"]["image"]).astype(int)
            # (the magenta body of an open gripper; closed, the body is cyan like the fingers)
            v, u = np.nonzero(np.all(np.abs(image - (235, 30, 200)) <= 40, axis=-1))
            if len(u):
                open_frames += 1
                assert abs(u.mean() - 64) < 2 and abs(v.mean() - 64) < 2
        assert open_frames >= len(ep["steps"]) // 3
        moves = np.array([s["action"]["world_vector"] for s in ep["steps"]])
        np.testing.assert_allclose(moves / 0.02, np.round(moves / 0.02), atol=1e-3)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
