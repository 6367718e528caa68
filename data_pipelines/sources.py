"""The mixture's sources: open each configured dataset (generating the toy world on first use),
read this process's part of a split and turn its records into fixed-shape examples
{image, prompt, answer, action, source, is_robot} (plus `answers` for evaluation, and
`wrist_present` / `wrist_image` when the model takes a wrist camera).
"""
import dataclasses

import numpy as np
import tensorflow as tf

from data_pipelines import images, robot, web
from rt2_jax import actions as actions_lib
from rt2_jax import localization, preprocessing
from rt2_jax import tokenizer as tokenizer_lib

ROBOT = "robot"


def seed_for(*parts):
    """A reproducible 31-bit seed from integers (base seed, process, source, purpose)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


@dataclasses.dataclass
class Source:
    name: str
    index: int
    config: object
    builder: object
    builder_dir: str


def _resolve_toy_world(data, sources):
    """Fills builder_dir of sources that name a toy-world dataset (generated on first use)."""
    wanted = [s for s in sources.values() if s.get("toy_world") and not s.get("builder_dir")]
    if not wanted:
        return {}
    from data_pipelines.builders import toy_world
    toy = data.toy_world
    # Configs saved before these fields existed lack them: the generator's defaults apply.
    extra = {k: toy[k] for k in ("locate_per_scene", "locate_pairs_per_scene", "labels",
                                 "noise_std", "gripper_flip_prob", "terminate_repeats",
                                 "camera", "move_quantum", "grid", "tasks", "pause_prob",
                                 "card_half", "card_cover_prob", "retreat_z",
                                 "release_z")
             if k in toy}
    return toy_world.ensure_toy_world(toy.cache_dir or None, episodes=toy.episodes,
                                      vqa_scenes=toy.vqa_scenes, seed=toy.seed, **extra)


def open_sources(config):
    data = config.data
    names = sorted(data.sources.keys())
    if not names:
        raise ValueError("config.data.sources is empty; add at least one source.")
    toy_paths = _resolve_toy_world(data, data.sources)
    opened = []
    for index, name in enumerate(names):
        source = data.sources[name]
        builder_dir = source.get("builder_dir") or ""
        if not builder_dir and source.get("toy_world"):
            builder_dir = str(toy_paths[source.toy_world])
        if source.kind == ROBOT:
            if not builder_dir:
                raise ValueError(f"Robot source {name!r} needs config.data.sources.{name}."
                                 "builder_dir (an RLDS dataset version directory).")
            builder = robot.open_builder(builder_dir)
            robot.validate_robot_mapping(builder, source.mapping, name)
        else:
            source_for_open = dict(source)
            source_for_open["builder_dir"] = builder_dir
            builder = web.open_web_builder(_Attrs(source_for_open), name)
            web.validate_web_mapping(builder, source.kind, source.mapping, name)
        opened.append(Source(name, index, source, builder, builder_dir))
    return opened


class _Attrs(dict):
    __getattr__ = dict.__getitem__


def _robot_examples(src, split, seed, train, counters, skip_unreadable, wrist):
    mapping = src.config.mapping
    episodes = robot.read_episodes(src.builder, mapping, split, shuffle_files=train, seed=seed,
                                   skip_unreadable=skip_unreadable)
    if train:
        episodes = episodes.repeat()
    steps = robot.robot_steps(episodes, mapping, counters, wrist=wrist)

    def has_instruction(step):
        ok = tf.strings.length(tf.strings.strip(step["instruction"])) > 0
        counters.add("empty_text_steps", 1 - tf.cast(ok, tf.int64))
        return ok

    def to_example(step):
        prompt = web.template_join(tokenizer_lib.ROBOT_PROMPT, "instruction", step["instruction"])
        example = {"image": step["image"], "prompt": prompt, "answers": tf.constant([""]),
                   "action": step["action"]}
        if "wrist_image" in step:
            example["wrist_image"] = step["wrist_image"]
        return example

    return steps.filter(has_instruction).map(to_example)


def _web_examples(src, split, seed, train, counters, skip_unreadable, wrist):
    del wrist   # web data has no wrist camera: the example gets a black one, flagged absent
    records = web.read_web(src.builder, src.config.mapping, split, shuffle_files=train, seed=seed,
                           skip_unreadable=skip_unreadable)
    if train:
        records = records.repeat()
    examples = web.web_examples(records, src.config.kind, src.config.mapping, counters)
    return examples.map(lambda e: {**e, "action": tf.zeros([actions_lib.NUM_DIMS], tf.float32)})


def source_dataset(src, config, *, train, split, seed, counters):
    data = config.data
    skip = bool(data.skip_unreadable)
    wrist_mode = preprocessing.wrist_camera(config)
    make = _robot_examples if src.config.kind == ROBOT else _web_examples
    ds = make(src, split, seed, train, counters, skip, bool(wrist_mode))
    if train:
        ds = ds.shuffle(int(data.shuffle_buffer), seed=seed_for(seed, 1),
                        reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed_for(seed, 2)).batch(2))
    answer_choice = src.config.get("answer_choice", "first") if train else "first"
    max_answers = int(data.eval.max_answers)

    locate = localization.enabled(config)
    points = localization.num_points(config) if locate else 1
    locate_answers = bool(src.config.get("locate_answers", False)) and src.config.kind != ROBOT
    locate_exclude = str(src.config.get("locate_exclude", "") or "")
    if locate_exclude:
        try:
            tf.strings.regex_full_match("", locate_exclude)
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            raise ValueError(f"config.data.sources.{src.name}.locate_exclude="
                             f"{locate_exclude!r} is not a valid RE2 regular expression: "
                             f"{e}") from None

    def finish(index, example_and_rng):
        example, rng = example_and_rng
        answer = web.pick_answer(example["answers"], answer_choice, rng + 3)
        if locate:
            # Wrist cameras are refused with the loss on (localization.weight).
            # Point p of an answer trains keypoint p (localization.num_points of them).
            point, has_point = (web.parse_points(answer, points) if locate_answers
                                else (tf.zeros([points, 2], tf.float32),
                                      tf.zeros([points], tf.bool)))
            if locate_answers and locate_exclude:   # these rows keep only their text loss
                has_point &= ~tf.strings.regex_full_match(
                    example["prompt"], f"(?s).*(?:{locate_exclude}).*")
            image, uv, in_view = images.prepare_image_and_point(
                example["image"], point, rng, data, int(config.image_size), train)
            has_point &= in_view
            cameras = {"image": image, "locate_uv": tf.where(has_point[..., None], uv, 0.0),
                       "locate_mask": tf.cast(has_point, tf.float32)}
        else:
            cameras = images.camera_inputs(example, rng, data, int(config.image_size),
                                           wrist_mode, train)
        out = {
            **cameras,
            "prompt": example["prompt"],
            "answer": answer,
            "action": tf.ensure_shape(example["action"], [actions_lib.NUM_DIMS]),
            "source": tf.constant(src.index, tf.int32),
            "is_robot": tf.constant(src.config.kind == ROBOT),
        }
        if not train:
            answers = example["answers"][:max_answers]
            out["answers"] = tf.ensure_shape(
                tf.pad(answers, [[0, max_answers - tf.size(answers)]]), [max_answers])
        return index, out

    ds = ds.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip:
        # Undecodable images are dropped; the gaps in the element index count them exactly.
        ds = ds.ignore_errors(log_warning=True)

        def count_gaps(last, indexed):
            index, example = indexed
            counters.add("unreadable_images", index - last - 1)
            return index, (index, example)

        ds = ds.scan(tf.constant(-1, tf.int64), count_gaps)
    return ds.map(lambda index, example: example)
