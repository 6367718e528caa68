"""The co-fine-tuning mixture: robot + web sources → fixed-shape host batches.

Each source is read (this process's disjoint part), repeated, shuffled and turned into
fixed-shape examples; `tf.data.Dataset.sample_from_datasets(weights, seed)` merges them; the
merged stream is batched to the host batch (global batch / process_count), tokenized and
prefetched. Host batch (numpy, fixed shapes; the contract the trainer and evaluator rely on):

  image              uint8   [B, H, W, 3]   resized to config.image_size
  encoder_tokens     int32   [B, Le]        prompt ids + EOS, pad 0 (Le = config.max_prompt_len)
  encoder_mask       bool    [B, Le]
  decoder_tokens     int32   [B, Ld]        TARGET ids incl. EOS (the model shifts right itself)
  decoder_loss_mask  float32 [B, Ld]        1 on target ids and EOS
  source             int32   [B]            index into Mixture.source_names
  is_robot           bool    [B]            robot rows (decoder_tokens = 8 action ids + EOS)
  action             float32 [B, 8]         normalized action: dims 1..7 clipped to the bounds
                                            and scaled to [-1, 1], terminate 0/1; zeros elsewhere

The eval variant (split="val") reads each source once, in order, without augmentation or
shuffling, pads the last batch and adds `valid` bool [B], `answers` bytes [B, K] (the raw
reference answers, "" padded) and `action_raw` float32 [B, 8] (robot units).
"""
import dataclasses
import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf

from data_pipelines import robot, stats, web
from rt2_jax import actions as actions_lib
from rt2_jax import preprocessing
from rt2_jax import tokenizer as tokenizer_lib

ROBOT = "robot"
# FailedPrecondition: a split holds fewer records than its metadata says (a truncated shard).
_READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                tf.errors.FailedPreconditionError)


def _seed(*parts):
    """A reproducible 31-bit seed from integers (base seed, process, source, purpose)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def decode_image(image):
    """Encoded bytes or a uint8 tensor → uint8 [h, w, 3]."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    image = tf.cast(image, tf.uint8)
    return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                   lambda: image[..., :3])


def resize_image(image, size, aspect):
    """uint8 [h, w, 3] → float32 [size, size, 3]: squash, pad (letterbox) or center_crop, in the
    graph (`rt2_jax.preprocessing.resize_image` is the same rule outside TensorFlow)."""
    preprocessing.check_aspect(aspect)
    if aspect == "squash":
        return tf.image.resize(image, [size, size], antialias=True)
    if aspect == "pad":
        return tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, antialias=True)
    if aspect == "center_crop":
        shape = tf.shape(image)
        side = tf.minimum(shape[0], shape[1])
        image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2,
                                              (shape[1] - side) // 2, side, side)
        return tf.image.resize(image, [size, size], antialias=True)
    raise AssertionError(aspect)  # check_aspect accepted a mode this function lacks


def augment_crop(image, seed, augment):
    """Random resized crop (area fraction and aspect ratio ranges from the config)."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=(augment.crop_scale_min, 1.0),
        aspect_ratio_range=(augment.crop_ratio_min, augment.crop_ratio_max),
        min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    return tf.slice(image, begin, crop_size)


def augment_color(image, seed, augment):
    """Brightness/contrast jitter on float32 [0, 255] pixels."""
    image = image / 255.0
    if augment.brightness > 0:
        image = tf.image.stateless_random_brightness(image, augment.brightness, seed=seed)
    if augment.contrast > 0:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - augment.contrast, 1.0 + augment.contrast, seed=seed + 1)
    return image * 255.0


def prepare_image(image, seed, data, size, train):
    image = decode_image(image)
    if train and data.augment.enabled:
        image = augment_crop(image, seed, data.augment)
    image = resize_image(image, size, data.image_aspect)
    if train and data.augment.enabled:
        image = augment_color(image, seed + 2, data.augment)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [size, size, 3])


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
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
    extra = {k: toy[k] for k in ("locate_per_scene", "labels", "noise_std", "gripper_flip_prob",
                                 "terminate_repeats", "camera", "move_quantum") if k in toy}
    return toy_world.ensure_toy_world(toy.cache_dir or None, episodes=toy.episodes,
                                      vqa_scenes=toy.vqa_scenes, seed=toy.seed, **extra)


def _open_sources(config):
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
        opened.append(_Source(name, index, source, builder, builder_dir))
    return opened


class _Attrs(dict):
    __getattr__ = dict.__getitem__


def _robot_examples(src, split, seed, train, counters, skip_unreadable):
    mapping = src.config.mapping
    episodes = robot.read_episodes(src.builder, mapping, split, shuffle_files=train, seed=seed,
                                   skip_unreadable=skip_unreadable)
    if train:
        episodes = episodes.repeat()
    steps = robot.robot_steps(episodes, mapping, counters)

    def has_instruction(step):
        ok = tf.strings.length(tf.strings.strip(step["instruction"])) > 0
        counters.add("empty_text_steps", 1 - tf.cast(ok, tf.int64))
        return ok

    def to_example(step):
        prompt = web.template_join(tokenizer_lib.ROBOT_PROMPT, "instruction", step["instruction"])
        return {"image": step["image"], "prompt": prompt, "answers": tf.constant([""]),
                "action": step["action"]}

    return steps.filter(has_instruction).map(to_example)


def _web_examples(src, split, seed, train, counters, skip_unreadable):
    records = web.read_web(src.builder, src.config.mapping, split, shuffle_files=train, seed=seed,
                           skip_unreadable=skip_unreadable)
    if train:
        records = records.repeat()
    examples = web.web_examples(records, src.config.kind, src.config.mapping, counters)
    return examples.map(lambda e: {**e, "action": tf.zeros([8], tf.float32)})


def _source_dataset(src, config, *, train, split, seed, counters):
    data = config.data
    skip = bool(data.skip_unreadable)
    make = _robot_examples if src.config.kind == ROBOT else _web_examples
    ds = make(src, split, seed, train, counters, skip)
    if train:
        ds = ds.shuffle(int(data.shuffle_buffer), seed=_seed(seed, 1),
                        reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=_seed(seed, 2)).batch(2))
    answer_choice = src.config.get("answer_choice", "first") if train else "first"
    max_answers = int(data.eval.max_answers)

    def finish(index, example_and_rng):
        example, rng = example_and_rng
        out = {
            "image": prepare_image(example["image"], rng, data, int(config.image_size), train),
            "prompt": example["prompt"],
            "answer": web.pick_answer(example["answers"], answer_choice, rng + 3),
            "action": tf.ensure_shape(example["action"], [8]),
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


# ---------------------------------------------------------------------------------------------
# Tokenization (one numpy call per batch, with the project's tokenizers)
# ---------------------------------------------------------------------------------------------


class _BatchEncoder:
    def __init__(self, tokenizer, action_tokenizer, prompt_len, target_len, counters):
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.prompt_len = prompt_len
        self.target_len = target_len
        self.counters = counters
        self.low, self.high = action_tokenizer.bounds.limits()
        self._lock = threading.Lock()

    def __call__(self, prompt, answer, action, is_robot):
        with self._lock:
            return self._encode(prompt, answer, action, is_robot)

    def _encode(self, prompt, answer, action, is_robot):
        tok = self.tokenizer
        before = tok.num_truncated
        enc, enc_mask = preprocessing.encode_prompts(tok, [p.decode("utf-8") for p in prompt],
                                                     self.prompt_len)
        self.counters.add_host("truncated_prompts", tok.num_truncated - before)
        before = tok.num_truncated
        dec, dec_mask = tok.encode_batch([a.decode("utf-8") for a in answer], self.target_len,
                                         add_eos=True)
        self.counters.add_host("truncated_targets", tok.num_truncated - before)
        norm = np.zeros_like(action, dtype=np.float32)
        rows = np.flatnonzero(is_robot)
        if rows.size:
            robot_actions = action[rows]
            outside = (robot_actions[:, 1:] < self.low) | (robot_actions[:, 1:] > self.high)
            self.counters.add_host("clipped_actions", outside.any(axis=1).sum())
            self.counters.add_host("clipped_values", outside.sum())
            ids = self.action_tokenizer.target_token_ids(robot_actions)
            dec[rows] = tok.pad_id
            dec[rows, :ids.shape[1]] = ids
            dec_mask[rows] = False
            dec_mask[rows, :ids.shape[1]] = True
            norm[rows] = preprocessing.normalize_actions(robot_actions, self.low, self.high)
        return enc, enc_mask, dec, dec_mask.astype(np.float32), norm


def _tokenize_batches(ds, encoder, batch_size):
    def tokenize(batch):
        enc, enc_mask, dec, dec_loss, norm = tf.numpy_function(
            encoder, [batch["prompt"], batch["answer"], batch["action"], batch["is_robot"]],
            [tf.int32, tf.bool, tf.int32, tf.float32, tf.float32], stateful=False)
        out = {
            "image": batch["image"],
            "encoder_tokens": tf.ensure_shape(enc, [batch_size, encoder.prompt_len]),
            "encoder_mask": tf.ensure_shape(enc_mask, [batch_size, encoder.prompt_len]),
            "decoder_tokens": tf.ensure_shape(dec, [batch_size, encoder.target_len]),
            "decoder_loss_mask": tf.ensure_shape(dec_loss, [batch_size, encoder.target_len]),
            "source": batch["source"],
            "is_robot": batch["is_robot"],
            "action": tf.ensure_shape(norm, [batch_size, 8]),
        }
        if "answers" in batch:
            out.update(answers=batch["answers"], valid=batch["valid"],
                       action_raw=batch["action"])
        return out

    return ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _pad_batch(batch_size):
    def pad(batch):
        n = tf.shape(batch["source"])[0]
        padded = {k: tf.pad(v, [[0, batch_size - n]] + [[0, 0]] * (len(v.shape) - 1))
                  for k, v in batch.items()}
        padded["valid"] = tf.range(batch_size) < n
        padded["source"] = tf.where(padded["valid"], padded["source"], -1)
        return {k: tf.ensure_shape(v, [batch_size, *v.shape[1:]]) for k, v in padded.items()}
    return pad


# ---------------------------------------------------------------------------------------------
# The mixture
# ---------------------------------------------------------------------------------------------


class Mixture:
    """A stream of host batches plus everything needed to interpret and resume it.

    Iterate it (`next(mixture)` → dict of numpy arrays) or use `dataset` directly. `save(dir)` /
    `restore(dir)` checkpoint the iterator (tf.data iterator checkpointing: a restored iterator
    continues the same stream) together with the counters; `checkpoint` is the underlying
    `tf.train.Checkpoint` for callers that manage their own.
    """

    def __init__(self, *, dataset, split, source_names, source_kinds, weights, tokenizer,
                 action_tokenizer, action_stats, all_action_stats, counters, host_batch_size):
        self.dataset = dataset
        self.split = split
        self.source_names = tuple(source_names)
        self.source_kinds = tuple(source_kinds)
        self.weights = tuple(weights)
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.action_stats = action_stats
        self.all_action_stats = all_action_stats
        self.host_batch_size = host_batch_size
        self._counters = counters
        self._iterator = None
        self._checkpoint = None

    @property
    def action_bounds(self):
        return self.action_tokenizer.bounds

    def counters(self):
        """Skip/clip/truncation counts so far (see data_pipelines.stats.COUNTER_NAMES)."""
        return self._counters.as_dict()

    @property
    def iterator(self):
        if self._iterator is None:
            self._iterator = iter(self.dataset)
            self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        return self._iterator

    @property
    def checkpoint(self):
        self.iterator  # noqa: B018  (creates the iterator and its checkpoint)
        return self._checkpoint

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = self.iterator.get_next()
        except tf.errors.OutOfRangeError:
            raise StopIteration from None
        except _READ_ERRORS as e:
            raise RuntimeError(
                f"The data pipeline could not read a record ({type(e).__name__}: "
                f"{e.message.splitlines()[0]}). Fix or remove the bad data, or set "
                "config.data.skip_unreadable=True to skip such records (they are counted in "
                "Mixture.counters() and logged).") from e
        return tf.nest.map_structure(lambda t: t.numpy(), batch)

    def save(self, directory):
        """Writes the iterator state and counters under `directory`; returns the prefix."""
        tf.io.gfile.makedirs(directory)
        prefix = self.checkpoint.write(os.path.join(directory, "data_iterator"))
        with tf.io.gfile.GFile(os.path.join(directory, "data_counters.json"), "w") as f:
            json.dump(self.counters(), f)
        return prefix

    def restore(self, directory):
        """Restores what `save(directory)` wrote; the next batch continues the saved stream."""
        prefix = os.path.join(directory, "data_iterator")
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"No data iterator state at {prefix!r} (expected "
                                    "Mixture.save to have written it).")
        self.checkpoint.read(prefix).assert_consumed()
        counters_path = os.path.join(directory, "data_counters.json")
        if tf.io.gfile.exists(counters_path):
            with tf.io.gfile.GFile(counters_path) as f:
                self._counters.load_dict(json.load(f))


def _action_tokenizer(config, sources, tokenizer, robot_stats):
    actions_cfg = config.actions
    chosen = config.data.get("action_stats_source", "") or (
        next((s.name for s in sources if s.config.kind == ROBOT), ""))
    if chosen and chosen not in robot_stats:
        raise ValueError(f"config.data.action_stats_source={chosen!r} is not a robot source; "
                         f"robot sources: {sorted(robot_stats)}.")
    stats_dict = robot_stats.get(chosen)
    if stats_dict is None and actions_cfg.bounds != "fixed":
        raise ValueError(f"Action bounds mode {actions_cfg.bounds!r} needs a robot source for "
                         "statistics; add one or use config.actions.bounds='fixed'.")
    bounds = actions_lib.ActionBounds.from_stats(
        stats_dict, actions_cfg.bounds, fixed_low=list(actions_cfg.get("fixed_low", [])) or None,
        fixed_high=list(actions_cfg.get("fixed_high", [])) or None)
    return actions_lib.ActionTokenizer(bounds, tokenizer, actions_cfg.mapping), stats_dict


def build_mixture(config, *, split="train", process_index=0, process_count=1, seed=None,
                  progress=True):
    """The host-batch stream for `split` ("train": mixed and repeated; "val": finite eval).

    Each process reads a disjoint part of every source (tfds.even_splits) and yields
    global_batch_size / process_count examples per batch; seeds differ per process and are
    reproducible from `seed` (default config.seed).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: use 'train' or 'val'.")
    train = split == "train"
    data = config.data
    seed = int(config.seed if seed is None else seed)
    batch_cfg = data if train else data.eval
    if batch_cfg.global_batch_size % process_count:
        raise ValueError(f"global_batch_size={batch_cfg.global_batch_size} is not divisible by "
                         f"process_count={process_count}.")
    host_batch = batch_cfg.global_batch_size // process_count
    if config.max_target_len < actions_lib.NUM_DIMS + 1:
        raise ValueError(f"config.max_target_len={config.max_target_len} < 9 (8 action ids + "
                         "EOS).")

    sources = _open_sources(config)
    tokenizer = tokenizer_lib.Tokenizer(config.tokenizer.get("model_path") or None)
    robot_stats = {}
    for src in sources:
        if src.config.kind == ROBOT:
            robot_stats[src.name], _ = stats.load_or_compute_action_stats(
                src.builder, src.builder_dir, src.config.mapping, src.config.train_split,
                cache_dir=data.cache_dir, skip_unreadable=bool(data.skip_unreadable),
                progress=progress)
    action_tokenizer, action_stats = _action_tokenizer(config, sources, tokenizer, robot_stats)

    weights = np.array([float(s.config.weight) for s in sources])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"config.data.sources weights must be >= 0 with a positive sum, got "
                         f"{dict(zip([s.name for s in sources], weights, strict=True))}.")
    counters = stats.Counters()
    per_source, per_source_index = [], []
    for src in sources:
        src_split = src.config.train_split if train else src.config.eval_split
        if not src_split:  # an empty split leaves the source out of this stream
            if train and weights[src.index] > 0:
                logging.warning("Source %s has no train_split: left out of training (its weight "
                                "%s is not used).", src.name, src.config.weight)
            weights[src.index] = 0.0
            continue
        src_split = robot.split_for_process(src_split, process_index, process_count)
        src_seed = _seed(seed, process_index, src.index)
        ds = _source_dataset(src, config, train=train, split=src_split, seed=src_seed,
                             counters=counters)
        if not train and data.eval.max_examples_per_source > 0:
            ds = ds.take(int(data.eval.max_examples_per_source))
        per_source.append(ds)
        per_source_index.append(src.index)
        logging.info("Source %d %s (%s): split %s, weight %s.", src.index, src.name,
                     src.config.kind, src_split, src.config.weight)

    if not per_source:
        raise ValueError(f"No source has a {split} split configured.")
    if train and weights.sum() <= 0:
        raise ValueError("Every source with a train_split has weight 0; give one a positive "
                         "weight in config.data.sources.")
    if weights.sum() > 0:
        weights = weights / weights.sum()
    if train:
        mixed = tf.data.Dataset.sample_from_datasets(
            per_source, weights=[float(weights[i]) for i in per_source_index],
            seed=_seed(seed, process_index, 1 << 20), stop_on_empty_dataset=False)
        batched = mixed.batch(host_batch, drop_remainder=True,
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        mixed = per_source[0]
        for ds in per_source[1:]:
            mixed = mixed.concatenate(ds)
        batched = mixed.batch(host_batch).map(_pad_batch(host_batch))
    encoder = _BatchEncoder(tokenizer, action_tokenizer, int(config.max_prompt_len),
                            int(config.max_target_len), counters)
    out = _tokenize_batches(batched, encoder, host_batch).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # Counters (tf.Variables) and the tokenizer call are side state, not stream state.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    out = out.with_options(options)
    return Mixture(dataset=out, split=split, source_names=[s.name for s in sources],
                   source_kinds=[s.config.kind for s in sources], weights=weights.tolist(),
                   tokenizer=tokenizer, action_tokenizer=action_tokenizer,
                   action_stats=action_stats, all_action_stats=robot_stats, counters=counters,
                   host_batch_size=host_batch)
