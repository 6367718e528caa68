"""Small on-disk datasets for the data pipeline tests, written with TFDS.

`write_fake_fractal` writes RLDS episodes in the fractal20220817_data schema (the fields the
pipelines read plus a few they ignore) with known actions: step t of episode e has
world_vector = [e, t, 0.5] / 100, so a test can tell which episode and step it sees.
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import config as data_cfg

F = tfds.features

# Episode lengths: a 1-step episode, a long one, a zero-length one and ordinary ones.
FRACTAL_EPISODE_LENGTHS = (3, 1, 12, 0, 4, 2)
NAN_EPISODE, NAN_STEP = 4, 1  # this step's action is NaN
INSTRUCTIONS = ("pick up the red block", "move the blue ball near the green ring",
                "push the yellow star left")


def fractal_features(image_shape):
    return F.FeaturesDict({
        "steps": F.Dataset({
            "action": F.FeaturesDict({
                "base_displacement_vector": F.Tensor(shape=(2,), dtype=np.float32),
                "gripper_closedness_action": F.Tensor(shape=(1,), dtype=np.float32),
                "rotation_delta": F.Tensor(shape=(3,), dtype=np.float32),
                "terminate_episode": F.Tensor(shape=(3,), dtype=np.int32),
                "world_vector": F.Tensor(shape=(3,), dtype=np.float32),
            }),
            "is_first": np.bool_,
            "is_last": np.bool_,
            "is_terminal": np.bool_,
            "observation": F.FeaturesDict({
                "image": F.Image(shape=image_shape),
                "natural_language_instruction": F.Text(),
                "gripper_closed": F.Tensor(shape=(1,), dtype=np.float32),
            }),
            "reward": F.Scalar(dtype=np.float32),
        }),
    })


def fake_step(episode, t, length, image_shape, images=None, instructions=INSTRUCTIONS,
              action_scale=1.0):
    """`images(episode, t)` -> uint8 image, if given (else flat colours coding episode, step).
    `action_scale` multiplies the position and rotation deltas (a robot with other units)."""
    last = t == length - 1
    world = np.array([episode, t, 0.5], np.float32) / 100 * np.float32(action_scale)
    if (episode, t) == (NAN_EPISODE, NAN_STEP):
        world[1] = np.nan
    if images is not None:
        image = images(episode, t)
    else:
        image = np.zeros(image_shape, np.uint8)
        image[..., 0] = (10 * episode) % 256
        image[..., 1] = (10 * t) % 256
    return {
        "action": {
            "base_displacement_vector": np.zeros(2, np.float32),
            "gripper_closedness_action": np.array([1.0 if t % 2 else -1.0], np.float32),
            "rotation_delta": np.array([0.1, -0.1, 0.05 * (t % 3)], np.float32)
            * np.float32(action_scale),
            "terminate_episode": np.array([1, 0, 0] if last else [0, 1, 0], np.int32),
            "world_vector": world,
        },
        "is_first": t == 0, "is_last": last, "is_terminal": last,
        "observation": {
            "image": image,
            "natural_language_instruction": instructions[episode % len(instructions)],
            "gripper_closed": np.zeros(1, np.float32),
        },
        "reward": float(last),
    }


def write_fake_fractal(data_dir, name="fake_fractal", lengths=FRACTAL_EPISODE_LENGTHS,
                       image_shape=(256, 320, 3), images=None, instructions=INSTRUCTIONS,
                       action_scale=1.0):
    """Writes the RLDS dataset; returns its version directory. `images(episode, t)` and
    `instructions` (episode e uses instructions[e % len]) replace the default contents;
    `action_scale` scales the position and rotation deltas."""
    episodes = [(e, {"steps": [fake_step(e, t, n, image_shape, images, instructions,
                                         action_scale) for t in range(n)]})
                for e, n in enumerate(lengths)]
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="0.1.0", features=fractal_features(image_shape),
        split_datasets={"train": episodes}, data_dir=str(data_dir), disable_shuffling=True)
    return os.fspath(builder.data_dir)


def write_fake_vqa(data_dir, name="fake_vqa", num_examples=12, image_shape=(32, 40, 3)):
    features = F.FeaturesDict({"image": F.Image(shape=image_shape), "question": F.Text(),
                               "answers": F.Sequence(F.Text())})

    def example(i):
        image = np.full(image_shape, 20 * i % 256, np.uint8)
        answers = [f"answer{i}"] + (["second"] if i % 2 else [])
        return i, {"image": image, "question": f"what is item {i}?", "answers": answers}

    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, disable_shuffling=True,
        split_datasets={"train": [example(i) for i in range(num_examples)],
                        "validation": [example(i) for i in range(100, 104)]},
        data_dir=str(data_dir))
    return os.fspath(builder.data_dir)


def data_config(robot_dir, vqa_dir, *, robot_weight=0.5, batch=8, image_size=32,
                shuffle_buffer=32):
    """A full config (what the trainer passes) over the fake datasets."""
    import ml_collections

    sources = {
        "robot": data_cfg.robot_source(weight=robot_weight, builder_dir=robot_dir,
                                          train_split="train", eval_split="train"),
        "vqa": data_cfg.web_source(kind="vqa", weight=1 - robot_weight, mapping="toy_vqa",
                                      builder_dir=vqa_dir),
    }
    c = ml_collections.ConfigDict()
    c.seed = 3
    c.image_size = image_size
    c.max_prompt_len = 24
    c.max_target_len = 12
    c.tokenizer = ml_collections.ConfigDict(dict(model_path=""))
    c.actions = ml_collections.ConfigDict(dict(mapping="integers", bounds="q01_q99",
                                               fixed_low=[-1.0] * 7, fixed_high=[1.0] * 7))
    c.data = data_cfg.get_data_config(sources=sources, global_batch_size=batch,
                                         shuffle_buffer=shuffle_buffer)
    c.data.cache_dir = os.path.join(robot_dir, "..", "..", "cache")
    return c


# --- Open X-Embodiment schemas (as the TensorFlow Datasets catalog lists them) ---------------
# Only the features the mappings read plus a few they ignore; images are small. Step t of
# episode e has the RT-2 action `oxe_action(dataset, e, t, n)`; every dataset has its own scale,
# so its bounds differ from the others'. Wrist cameras are flat grey (WRIST_GREY[dataset]).

OXE_SCALES = {"bridge": 3.0, "taco_play": 10.0, "berkeley_autolab_ur5": 0.3}
WRIST_GREY = {"taco_play": 90, "berkeley_autolab_ur5": 200}
MAIN_RED = {"fractal20220817_data": 40, "bridge": 100, "taco_play": 160,
            "berkeley_autolab_ur5": 220}


def oxe_action(dataset, episode, t, length):
    """The RT-2 action (terminate, translation, rotation, gripper) of a fake OXE step."""
    if dataset == "fractal20220817_data":   # write_fake_fractal's steps
        action = fake_step(episode, t, length, (1, 1, 3))["action"]
        return np.concatenate([[action["terminate_episode"][0]], action["world_vector"],
                               action["rotation_delta"], action["gripper_closedness_action"]]
                              ).astype(np.float32)
    scale = np.float32(OXE_SCALES[dataset])
    translation = np.array([episode + 1, t + 1, -0.5], np.float32) / 100 * scale
    rotation = np.array([0.02, -0.01 * t, 0.03 * (episode % 2)], np.float32) * scale
    gripper = np.float32(1.0 if t % 2 else -1.0)
    terminate = np.float32(t == length - 1)
    return np.concatenate([[terminate], translation, rotation, [gripper]]).astype(np.float32)


def _oxe_features(dataset, image_shape, wrist_shape):
    flags = {"is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_,
             "reward": F.Scalar(dtype=np.float32)}
    if dataset == "bridge":   # flat action, step-level instruction, image_0..
        return F.FeaturesDict({"steps": F.Dataset({
            "action": F.Tensor(shape=(7,), dtype=np.float32),
            "discount": F.Scalar(dtype=np.float32),
            "language_instruction": F.Text(),
            "observation": F.FeaturesDict({"image_0": F.Image(shape=image_shape),
                                           "image_1": F.Image(shape=image_shape),
                                           "state": F.Tensor(shape=(7,), dtype=np.float32)}),
            **flags})})
    if dataset == "taco_play":
        return F.FeaturesDict({"steps": F.Dataset({
            "action": F.FeaturesDict({
                "actions": F.Tensor(shape=(7,), dtype=np.float32),
                "rel_actions_gripper": F.Tensor(shape=(7,), dtype=np.float32),
                "rel_actions_world": F.Tensor(shape=(7,), dtype=np.float32),
                "terminate_episode": F.Scalar(dtype=np.float32)}),
            "observation": F.FeaturesDict({
                "rgb_static": F.Image(shape=image_shape), "rgb_gripper": F.Image(shape=wrist_shape),
                "natural_language_instruction": F.Text(),
                "robot_obs": F.Tensor(shape=(15,), dtype=np.float32)}),
            **flags})})
    if dataset == "berkeley_autolab_ur5":
        return F.FeaturesDict({"steps": F.Dataset({
            "action": F.FeaturesDict({
                "gripper_closedness_action": F.Scalar(dtype=np.float32),
                "rotation_delta": F.Tensor(shape=(3,), dtype=np.float32),
                "terminate_episode": F.Scalar(dtype=np.float32),
                "world_vector": F.Tensor(shape=(3,), dtype=np.float32)}),
            "observation": F.FeaturesDict({
                "image": F.Image(shape=image_shape), "hand_image": F.Image(shape=wrist_shape),
                "natural_language_instruction": F.Text(),
                "robot_state": F.Tensor(shape=(15,), dtype=np.float32)}),
            **flags})})
    raise ValueError(f"no fake schema for {dataset!r}")


def _oxe_step(dataset, episode, t, length, image_shape, wrist_shape):
    action = oxe_action(dataset, episode, t, length)
    terminate, move, gripper = action[0], action[1:7], action[7]
    last = t == length - 1
    main = np.zeros(image_shape, np.uint8)
    main[..., 0] = MAIN_RED[dataset]
    main[..., 1] = (10 * t) % 256
    wrist = np.full(wrist_shape, WRIST_GREY.get(dataset, 0), np.uint8)
    instruction = INSTRUCTIONS[episode % len(INSTRUCTIONS)]
    step = {"is_first": t == 0, "is_last": last, "is_terminal": last, "reward": float(last)}
    if dataset == "bridge":
        return {**step, "action": np.concatenate([move, [gripper]]).astype(np.float32),
                "discount": 1.0, "language_instruction": instruction,
                "observation": {"image_0": main, "image_1": main[::-1],
                                "state": np.zeros(7, np.float32)}}
    if dataset == "taco_play":
        flat = np.concatenate([move, [gripper]]).astype(np.float32)
        return {**step, "action": {"actions": flat + 5, "rel_actions_gripper": -flat,
                                   "rel_actions_world": flat, "terminate_episode": terminate},
                "observation": {"rgb_static": main, "rgb_gripper": wrist,
                                "natural_language_instruction": instruction,
                                "robot_obs": np.zeros(15, np.float32)}}
    return {**step, "action": {"gripper_closedness_action": gripper,
                               "rotation_delta": move[3:], "terminate_episode": terminate,
                               "world_vector": move[:3]},
            "observation": {"image": main, "hand_image": wrist,
                            "natural_language_instruction": instruction,
                            "robot_state": np.zeros(15, np.float32)}}


def write_fake_oxe(data_dir, dataset, lengths=(3, 4, 2, 5), image_shape=(12, 16, 3),
                   wrist_shape=(8, 8, 3)):
    """Writes a small RLDS dataset in `dataset`'s OXE schema (fractal20220817_data, bridge,
    taco_play or berkeley_autolab_ur5); returns its version directory."""
    if dataset == "fractal20220817_data":
        def images(episode, t):
            image = np.zeros(image_shape, np.uint8)
            image[..., 0] = MAIN_RED[dataset]
            image[..., 1] = (10 * t) % 256
            return image
        return write_fake_fractal(data_dir, name=dataset, lengths=lengths,
                                  image_shape=image_shape, images=images)
    episodes = [(e, {"steps": [_oxe_step(dataset, e, t, n, image_shape, wrist_shape)
                               for t in range(n)]}) for e, n in enumerate(lengths)]
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=dataset, version="0.1.0", features=_oxe_features(dataset, image_shape, wrist_shape),
        split_datasets={"train": episodes}, data_dir=str(data_dir), disable_shuffling=True)
    return os.fspath(builder.data_dir)


def synthetic_text_batch(c, rng: np.random.Generator) -> dict:
    """A random web-row batch of config `c`'s shapes (64 px images); the first half's targets
    are action length (9 tokens), the second half's full length, so micro-batches of a split
    batch hold different token counts."""
    b = c.data.global_batch_size
    batch = {
        "image": rng.integers(0, 256, (b, 64, 64, 3), dtype=np.uint8),
        "encoder_tokens": rng.integers(3, 500, (b, c.max_prompt_len)).astype(np.int32),
        "encoder_mask": np.ones((b, c.max_prompt_len), bool),
        "decoder_tokens": rng.integers(3, 500, (b, c.max_target_len)).astype(np.int32),
        "decoder_loss_mask": np.ones((b, c.max_target_len), np.float32),
        "source": np.zeros(b, np.int32), "is_robot": np.zeros(b, bool),
        "action": np.zeros((b, 8), np.float32),
    }
    batch["decoder_loss_mask"][: b // 2, 9:] = 0.0
    return batch


STEP_FIRST_ACTION_ID = 600   # step_tables(): action bins 0..255 are ids 600..855


def step_config(**train):
    """The tiny config for single-step loss/gradient tests: batch 8, targets of 16 tokens,
    adamw with no clipping, z-loss or warmup (the first step already moves what has a
    gradient), then `train` on top."""
    from configs import tiny

    c = tiny.get_config()
    c.max_target_len = 16
    c.data.global_batch_size = 8
    c.train.update(dict(optimizer="adamw", grad_clip_norm=0.0, z_loss=0.0, warmup_steps=0))
    c.train.update(train)
    return c


def step_tables(vocab_size: int = 1024):
    """Action tables whose bins 0..255 are ids STEP_FIRST_ACTION_ID.. and every id is allowed at
    every action position."""
    from rt2_jax import train_state
    from rt2_jax.actions import NUM_BINS, NUM_DIMS

    id_to_bin = np.full(vocab_size, -1, np.int32)
    id_to_bin[STEP_FIRST_ACTION_ID:STEP_FIRST_ACTION_ID + NUM_BINS] = np.arange(NUM_BINS)
    return train_state.ActionTables(id_to_bin, np.ones((NUM_DIMS, vocab_size), bool))
