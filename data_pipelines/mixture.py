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

With a wrist camera (`config.model.wrist_camera`, rt2_jax/preprocessing.py): `wrist_present` bool
[B] (False for rows whose source has no wrist camera: their wrist image is black), and in
`tokens` mode `wrist_image` uint8 [B, H, W, 3]; in `side_by_side` mode `image` holds both cameras.
With the localization loss (config.train.locate_weight > 0, rt2_jax/localization.py):
`locate_uv` float32 [B, P, 2], a pointing answer's points in keypoint coordinates of `image`
(P = config.train.locate_points), and `locate_mask` float32 [B, P], 1 where a row has point p in
view.

The eval variant (split="val") reads each source once, in order, without augmentation or
shuffling, pads the last batch and adds `valid` bool [B], `answers` bytes [B, K] (the raw
reference answers, "" padded) and `action_raw` float32 [B, 8] (robot units).

The parts: `sources` (opening datasets, records -> examples), `images` (decode, augment,
resize), `encoding` (tokenizing, normalizing, padding host batches); this module mixes the
sources, builds the action tokenizer from the statistics and keeps the iterator resumable.
"""
import json
import logging
import os

import numpy as np
import tensorflow as tf

from data_pipelines import encoding, robot, sources, stats, web  # noqa: F401  (web: re-export)
from data_pipelines.images import decode_image, prepare_image, resize_image  # noqa: F401
from data_pipelines.sources import ROBOT, seed_for
from rt2_jax import actions as actions_lib
from rt2_jax import tokenizer as tokenizer_lib

# FailedPrecondition: a split holds fewer records than its metadata says (a truncated shard).
_READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                tf.errors.FailedPreconditionError)


class Mixture:
    """A stream of host batches plus everything needed to interpret and resume it.

    Iterate it (`next(mixture)` → dict of numpy arrays) or use `dataset` directly. `save(dir)` /
    `restore(dir)` checkpoint the iterator (tf.data iterator checkpointing: a restored iterator
    continues the same stream) together with the counters; `checkpoint` is the underlying
    `tf.train.Checkpoint` for callers that manage their own.
    """

    def __init__(self, *, dataset, split, source_names, source_kinds, weights, tokenizer,
                 dataset_tokenizers, default_dataset, all_action_stats, counters,
                 host_batch_size):
        self.dataset = dataset
        self.split = split
        self.source_names = tuple(source_names)
        self.source_kinds = tuple(source_kinds)
        self.weights = tuple(weights)
        self.tokenizer = tokenizer
        self.dataset_tokenizers = dict(dataset_tokenizers)   # robot source -> its tokenizer
        self.default_dataset = default_dataset
        self.action_tokenizer = self.dataset_tokenizers[default_dataset]
        self.all_action_stats = all_action_stats
        self.action_stats = all_action_stats.get(default_dataset)
        self.host_batch_size = host_batch_size
        self._counters = counters
        self._iterator = None
        self._checkpoint = None

    @property
    def action_bounds(self):
        """The default dataset's bounds (see dataset_bounds for every robot dataset's)."""
        return self.action_tokenizer.bounds

    @property
    def dataset_bounds(self) -> dict:
        """Robot source name -> the ActionBounds its actions are binned with."""
        return {name: tok.bounds for name, tok in self.dataset_tokenizers.items() if name}

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


def _action_tokenizers(config, opened, tokenizer, robot_stats):
    """(default dataset name, {robot source name: its ActionTokenizer}). Each robot dataset is
    binned with bounds from its own statistics (config.actions.bounds); the default dataset
    (`config.data.action_stats_source`, else the first robot source) is the one a single-dataset
    caller (the policy without `dataset=`, old exports) uses. With no robot source, one
    tokenizer under "" (fixed bounds only)."""
    robot_names = [s.name for s in opened if s.config.kind == ROBOT]
    default = config.data.get("action_stats_source", "") or (robot_names[0] if robot_names
                                                               else "")
    if default and default not in robot_stats:
        raise ValueError(f"config.data.action_stats_source={default!r} is not a robot source; "
                         f"robot sources: {sorted(robot_stats)}.")
    names = robot_names or [""]
    return default, {name: actions_lib.ActionTokenizer.from_config(
        config, stats=robot_stats.get(name), tokenizer=tokenizer) for name in names}


def _weight_robots_by_size(weights, opened, robot_stats):
    """Open X-Embodiment's convention: each robot dataset's weight times its number of steps
    (train split), rescaled so the robot sources together keep their configured share."""
    weights = weights.copy()
    robot_index = [s.index for s in opened if s.config.kind == ROBOT and weights[s.index] > 0]
    if not robot_index:
        return weights
    sizes = np.array([float(robot_stats[opened[i].name]["num_steps"]) for i in robot_index])
    scaled = weights[robot_index] * sizes
    weights[robot_index] = scaled / scaled.sum() * weights[robot_index].sum()
    return weights


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

    opened = sources.open_sources(config)
    tokenizer = tokenizer_lib.Tokenizer(config.tokenizer.get("model_path") or None)
    robot_stats = {}
    for src in opened:
        if src.config.kind == ROBOT:
            robot_stats[src.name], _ = stats.load_or_compute_action_stats(
                src.builder, src.builder_dir, src.config.mapping, src.config.train_split,
                cache_dir=data.cache_dir, skip_unreadable=bool(data.skip_unreadable),
                progress=progress)
    default_dataset, dataset_tokenizers = _action_tokenizers(config, opened, tokenizer,
                                                             robot_stats)

    weights = np.array([float(s.config.weight) for s in opened])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"config.data.sources weights must be >= 0 with a positive sum, got "
                         f"{dict(zip([s.name for s in opened], weights, strict=True))}.")
    if data.get("weight_robots_by_size", False):
        weights = _weight_robots_by_size(weights, opened, robot_stats)
    counters = stats.Counters()
    per_source, per_source_index = [], []
    for src in opened:
        src_split = src.config.train_split if train else src.config.eval_split
        if not src_split:  # an empty split leaves the source out of this stream
            if train and weights[src.index] > 0:
                logging.warning("Source %s has no train_split: left out of training (its weight "
                                "%s is not used).", src.name, src.config.weight)
            weights[src.index] = 0.0
            continue
        src_split = robot.split_for_process(src_split, process_index, process_count)
        src_seed = seed_for(seed, process_index, src.index)
        ds = sources.source_dataset(src, config, train=train, split=src_split, seed=src_seed,
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
            seed=seed_for(seed, process_index, 1 << 20), stop_on_empty_dataset=False)
        batched = mixed.batch(host_batch, drop_remainder=True,
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        mixed = per_source[0]
        for ds in per_source[1:]:
            mixed = mixed.concatenate(ds)
        batched = mixed.batch(host_batch).map(encoding.pad_batch(host_batch))
    per_source = [dataset_tokenizers.get(s.name) for s in opened]
    present = [robot.present_dims(s.config.mapping) if s.config.kind == ROBOT else None
               for s in opened]
    encoder = encoding.BatchEncoder(tokenizer, per_source, int(config.max_prompt_len),
                                    int(config.max_target_len), counters, present)
    out = encoding.tokenize_batches(batched, encoder, host_batch).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # Counters (tf.Variables) and the tokenizer call are side state, not stream state.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    out = out.with_options(options)
    return Mixture(dataset=out, split=split, source_names=[s.name for s in opened],
                   source_kinds=[s.config.kind for s in opened], weights=weights.tolist(),
                   tokenizer=tokenizer, dataset_tokenizers=dataset_tokenizers,
                   default_dataset=default_dataset, all_action_stats=robot_stats,
                   counters=counters, host_batch_size=host_batch)
