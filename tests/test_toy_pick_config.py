"""configs/toy_pick.py end to end at toy scale: its data are pick episodes only, its pointing
rows about the gripper train text alone, and an export of it is evaluated on picks."""

import os

import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from configs import toy_pick
from data_pipelines import mixture
from rt2_jax import localization, train, train_state
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.sim import vocabulary


def _small(tmp_path, module=toy_pick, vqa_scenes=12):
    c = module.get_config()
    c.data.toy_world.update(cache_dir=str(tmp_path / "toy"), episodes=6, vqa_scenes=vqa_scenes)
    c.data.cache_dir = str(tmp_path / "stats")
    c.data.global_batch_size = 12
    c.data.shuffle_buffer = 32
    c.data.eval.max_examples_per_source = 8
    c.train.update(dict(num_steps=2, warmup_steps=1, log_every=1, eval_every=0,
                        checkpoint_every=2, async_checkpoints=False, export_at_end=True,
                        export_dtype="float32"))
    return c


def test_the_pick_recipe_trains_on_picks_and_is_evaluated_on_picks(tmp_path):
    c = _small(tmp_path)
    assert localization.weight(c) == 1.0 and train_state.terminate_weight(c) == 5.0
    batch = next(mixture.build_mixture(c, progress=False))
    tok = tokenizer_lib.Tokenizer()
    pick_words = {t.split()[0] for t in vocabulary.TASK_TEMPLATES["pick"]}
    for row, robot in enumerate(batch["is_robot"]):
        prompt = tok.decode(batch["encoder_tokens"][row])
        if robot:
            assert any(word in prompt for word in pick_words), prompt
        elif "gripper" in prompt:
            assert batch["locate_mask"][row] == 0, prompt
    assert batch["is_robot"].any() and not batch["is_robot"].all()

    workdir = str(tmp_path / "run")
    train.train(c, workdir)
    (robot_dir,) = [s.builder_dir for s in mixture.sources.open_sources(c) if s.name == "robot"]
    robot = tfds.builder_from_directory(robot_dir)
    tasks = {ep["episode_metadata"]["task"]
             for ep in tfds.as_numpy(robot.as_dataset(split="train"))}
    assert tasks == {b"pick"}

    from rt2_jax import policy as policy_lib
    from rt2_jax.tools import eval_sim

    policy = policy_lib.Policy.from_export(os.path.join(workdir, "export"))
    fv = flags.FlagValues()
    eval_sim.define_flags(fv)
    fv(["eval_sim"])
    assert eval_sim.tasks_for(fv, policy) == ("pick",)
    assert eval_sim.grid_for(fv, policy) == 0.1
    result = eval_sim.evaluate_all(policy, categories=["seen", "symbols"], episodes=2,
                                   batch_size=2, max_episode_steps=2, log=None,
                                   tasks=eval_sim.tasks_for(fv, policy), grid=0.1)
    assert {r["task"] for r in result["episodes"]} == {"pick"}
    assert result["success"]["symbols"] is None
    assert np.isfinite(result["success"]["seen"])


def test_the_place_recipe_alternates_pick_and_place_and_points_at_two_things(tmp_path):
    from configs import toy_place

    c = _small(tmp_path, toy_place, vqa_scenes=40)
    c.data.global_batch_size = 48
    c.data.shuffle_buffer = 64
    assert localization.num_points(c) == 2
    batch = next(mixture.build_mixture(c, progress=False))
    assert batch["locate_uv"].shape == (48, 2, 2)
    tok = tokenizer_lib.Tokenizer()
    kinds, pairs = set(), 0
    for row, robot in enumerate(batch["is_robot"]):
        prompt = tok.decode(batch["encoder_tokens"][row])
        if robot:
            kinds.add("place" if "card" in prompt else "pick")
            assert not batch["locate_mask"][row].any()
        elif batch["locate_mask"][row, 1]:      # a second point: an object-and-card question
            pairs += 1
            assert "card" in prompt and batch["locate_mask"][row, 0], prompt
    assert kinds == {"pick", "place"} and pairs >= 1
    (robot_dir,) = [s.builder_dir for s in mixture.sources.open_sources(c) if s.name == "robot"]
    robot = tfds.builder_from_directory(robot_dir)
    tasks = {ep["episode_metadata"]["task"]
             for ep in tfds.as_numpy(robot.as_dataset(split="train"))}
    assert tasks == {b"pick", b"place_on_card"}
