"""Action statistics (one pass, cached as JSON) and the pipelines' skip/clip counters.

Statistics are over the 8-d RT-2 action in robot units (terminate as 0/1): mean, std, min, max,
q01, q99 per dim, plus episode/step counts and how many episodes were empty and how many steps
had a NaN/inf action. They are cached as `action_stats_<fingerprint>.json` next to the data
(or in `cache_dir` when the data directory is not writable); the fingerprint covers the dataset
(name, version, split sizes and shard lengths), the split and the mapping, so a changed mapping
recomputes them. The trainer saves the dict into checkpoints and exports.
"""
import hashlib
import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf
import tqdm

from data_pipelines import robot

STATS_FORMAT = "rt2_jax.action_stats.v1"
COUNTER_NAMES = (
    "episodes",           # episodes read by the stream (all sources, repeats included)
    "empty_episodes",     # zero-length episodes skipped
    "nonfinite_steps",    # steps with a NaN/inf action dropped
    "empty_text_steps",   # examples without instruction/question/answer dropped
    "clipped_actions",    # robot examples with >= 1 dim outside the bounds (clipped)
    "clipped_values",     # action values outside the bounds (clipped)
    "truncated_prompts",  # prompts cut to max_prompt_len
    "truncated_targets",  # targets cut to max_target_len
    "unreadable_images",  # images that failed to decode, skipped (skip_unreadable only)
)


class Counters:
    """Named int64 counters, updated inside tf.data graphs (`add`) and from numpy (`add_host`)."""

    def __init__(self):
        self._vars = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                      for name in COUNTER_NAMES}
        self._host = dict.fromkeys(COUNTER_NAMES, 0)
        self._lock = threading.Lock()

    def add(self, name, amount):
        """Graph-side increment (call inside dataset functions)."""
        self._vars[name].assign_add(tf.cast(amount, tf.int64))

    def add_host(self, name, amount):
        with self._lock:
            self._host[name] += int(amount)

    def as_dict(self):
        with self._lock:
            return {name: int(self._vars[name].numpy()) + self._host[name]
                    for name in COUNTER_NAMES}

    def load_dict(self, values):
        """Restores counts saved with a data iterator (unknown names are ignored)."""
        with self._lock:
            for name in COUNTER_NAMES:
                self._vars[name].assign(0)
                self._host[name] = int(values.get(name, 0))


def fingerprint(builder, mapping, split):
    info = builder.info
    splits = {name: [int(x) for x in info.splits[name].shard_lengths] for name in info.splits}
    # The wrist camera does not change the actions (nor the names of stats cached before it).
    mapping = {k: v for k, v in dict(mapping).items() if k != "wrist_image"}
    blob = json.dumps({"dataset": info.full_name, "splits": splits, "split": str(split),
                       "mapping": mapping, "format": STATS_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compute_action_stats(builder, mapping, split, *, skip_unreadable=False, progress=True):
    """One pass over `split`'s actions (images are not decoded). Returns the stats dict."""
    episodes = robot.read_episodes(builder, mapping, split, shuffle_files=False, seed=0,
                                   skip_unreadable=skip_unreadable)

    counters = Counters()   # episodes read, counted during the one pass below

    def episode_actions(index, episode):
        counters.add("episodes", 1)
        steps = episode["steps"].map(lambda step: robot.step_action(step, mapping))
        return steps.map(lambda action: (index, action))

    steps = episodes.enumerate().flat_map(episode_actions).batch(4096)
    try:
        num_episodes = int(builder.info.splits[split].num_examples)
    except Exception:  # a split tfds cannot size up front: the bar just counts
        num_episodes = None
    chunks, seen = [], set()
    bar = tqdm.tqdm(total=num_episodes, unit="episode", disable=not progress,
                    desc=f"action stats {builder.info.name}[{split}]")
    try:
        for indices, actions in steps.as_numpy_iterator():
            new = set(indices.tolist()) - seen
            seen |= new
            bar.update(len(new))
            chunks.append(actions)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
            tf.errors.FailedPreconditionError) as e:   # the last: fewer records than recorded
        raise RuntimeError(
            f"Could not read {builder.info.full_name} split {split!r} ({type(e).__name__}: "
            f"{e.message.strip().splitlines()[0] if e.message.strip() else e}). A shard may be "
            "truncated or corrupt: fix or regenerate the files, or set "
            "config.data.skip_unreadable=True to skip unreadable records (counted and "
            "logged).") from e
    finally:
        bar.close()
    actions = np.concatenate(chunks) if chunks else np.zeros((0, 8), np.float32)
    finite = np.all(np.isfinite(actions), axis=1)
    good = actions[finite].astype(np.float64)
    num_unreadable = 0
    if skip_unreadable:
        # Records lost to corruption (a truncated shard ends early): counted and logged once.
        num_read = counters.as_dict()["episodes"]
        if num_episodes is not None and num_read < num_episodes:
            num_unreadable = num_episodes - num_read
            logging.warning("%s[%s]: %d of %d episodes could not be read and are skipped "
                            "(config.data.skip_unreadable=True).", builder.info.full_name, split,
                            num_unreadable, num_episodes)
        if num_read == 0:
            raise ValueError(f"{builder.info.full_name} split {split!r}: no episode could be "
                             "read (every record is unreadable); check or regenerate its files.")
        num_episodes = num_read
    if not len(good):
        raise ValueError(f"{builder.info.full_name} split {split!r} has no steps with a finite "
                         "action; check the dataset and its mapping.")
    num_episodes_read = num_episodes if num_episodes is not None else len(seen)
    stats = {
        "format": STATS_FORMAT,
        "dims": list(robot.ACTION_DIMS),
        "dataset": builder.info.full_name,
        "split": str(split),
        "num_episodes": int(num_episodes_read),
        "num_empty_episodes": int(num_episodes_read - len(seen)),
        "num_unreadable_episodes": int(num_unreadable),
        "num_steps": len(good),
        "num_nonfinite_steps": int((~finite).sum()),
        "mean": good.mean(0).tolist(),
        "std": good.std(0).tolist(),
        "min": good.min(0).tolist(),
        "max": good.max(0).tolist(),
        "q01": np.quantile(good, 0.01, axis=0).tolist(),
        "q99": np.quantile(good, 0.99, axis=0).tolist(),
    }
    logging.info("Action stats for %s[%s]: %d episodes (%d empty), %d steps (%d non-finite "
                 "dropped).", stats["dataset"], split, stats["num_episodes"],
                 stats["num_empty_episodes"], stats["num_steps"], stats["num_nonfinite_steps"])
    return stats


def _candidate_paths(builder_dir, cache_dir, name):
    paths = [os.path.join(str(builder_dir), name)]
    if cache_dir:
        paths.append(os.path.join(os.path.expanduser(str(cache_dir)), name))
    return paths


def load_or_compute_action_stats(builder, builder_dir, mapping, split, *, cache_dir="",
                                 skip_unreadable=False, progress=True):
    """Cached stats (next to the data, else in cache_dir), computing and caching them if absent.

    Returns (stats, path) where path is where they were read from or written to ("" when
    nowhere was writable; a warning says so).
    """
    name = f"action_stats_{fingerprint(builder, mapping, split)}.json"
    candidates = _candidate_paths(builder_dir, cache_dir, name)
    for path in candidates:
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "r") as f:
                stats = json.load(f)
            if stats.get("format") == STATS_FORMAT:
                logging.info("Using cached action stats %s.", path)
                return stats, path
    stats = compute_action_stats(builder, mapping, split, skip_unreadable=skip_unreadable,
                                 progress=progress)
    stats["mapping"] = dict(mapping)
    for path in candidates:
        try:
            tf.io.gfile.makedirs(os.path.dirname(path))
            tmp = path + ".tmp"
            with tf.io.gfile.GFile(tmp, "w") as f:
                json.dump(stats, f, indent=1)
            tf.io.gfile.rename(tmp, path, overwrite=True)
            logging.info("Cached action stats in %s.", path)
            return stats, path
        except (tf.errors.OpError, OSError) as e:
            logging.info("Cannot cache action stats in %s (%s); trying the next place.", path, e)
    logging.warning("Action stats for %s were not cached (no writable place among %s); set "
                    "config.data.cache_dir.", builder.info.full_name, candidates)
    return stats, ""
