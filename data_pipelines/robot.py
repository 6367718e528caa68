"""Robot episodes (RLDS, read with TFDS) → steps of (image, instruction, 8-d RT-2 action).

Where a dataset keeps its fields comes from a mapping in the config (data_pipelines/mappings.py);
a dataset that does not match its mapping fails at start-up with the missing keys and the keys
it has. Actions come out in robot units in RT-2 order (`ACTION_DIMS`), terminate as 0/1;
normalization and tokenization happen in data_pipelines.mixture with the bounds from the stats.
"""
import logging
import re

import tensorflow as tf
import tensorflow_datasets as tfds

ACTION_DIMS = ("terminate", "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
_PART_SIZES = {"translation": 3, "rotation": 3, "gripper": 1}
# A mapping value for a part the dataset does not record (no rotation, no terminate signal):
# the part reads as zeros and its action tokens are left out of the loss.
ABSENT = "absent"
_PART_DIMS = {"terminate": (0,), "translation": (1, 2, 3), "rotation": (4, 5, 6),
              "gripper": (7,)}


def present_dims(mapping) -> list[bool]:
    """For each of the 8 action dims: does the dataset record it (False: mapped as ABSENT)."""
    present = [True] * len(ACTION_DIMS)
    for part, dims in _PART_DIMS.items():
        if mapping.get(part, "") == ABSENT:
            for d in dims:
                present[d] = False
    return present
_KEY_RE = re.compile(r"^(?P<path>[^\[\]]+?)(?:\[(?P<start>-?\d*)(?P<colon>:)?(?P<stop>-?\d*)\])?$")


def open_builder(builder_dir):
    """Opens a TFDS/RLDS dataset directory (local or gs://), the one holding dataset_info.json."""
    try:
        return tfds.builder_from_directory(str(builder_dir))
    except Exception as e:  # tfds raises several types for a bad directory
        raise FileNotFoundError(
            f"Cannot open the dataset directory {builder_dir!r} ({type(e).__name__}: {e}). "
            "Point the source's `builder_dir` at the version directory that holds "
            "dataset_info.json, e.g. .../fractal20220817_data/0.1.0.") from e


def feature_paths(features, prefix=""):
    """Maps every leaf feature path (`steps/observation/image`) to its feature connector."""
    out = {}
    if isinstance(features, tfds.features.Dataset):
        return feature_paths(features.feature, prefix)
    if isinstance(features, tfds.features.FeaturesDict):
        for key in features.keys():
            out.update(feature_paths(features[key], f"{prefix}{key}/"))
        return out
    out[prefix.rstrip("/")] = features
    return out


def parse_key(key):
    """`steps/action[0:3]` → ("steps/action", slice(0, 3)); `a/b[6]` → ("a/b", 6); `a/b` → None."""
    match = _KEY_RE.match(str(key).strip())
    if not match:
        raise ValueError(f"Bad feature key {key!r}: expected a/b/c, a/b/c[i] or a/b/c[i:j].")
    path, start, colon, stop = match.group("path", "start", "colon", "stop")
    if colon:
        return path, slice(int(start) if start else None, int(stop) if stop else None)
    if start:
        return path, int(start)
    return path, None


def _num_values(shape, index):
    size = 1
    for dim in shape:
        size *= dim if dim is not None else -1
    if index is None:
        return size
    if isinstance(index, int):
        return 1
    return len(range(*index.indices(shape[-1] if shape else 0)))


def validate_robot_mapping(builder, mapping, source_name):
    """Raises ValueError naming the missing keys, bad shapes and the keys the dataset has."""
    paths = feature_paths(builder.info.features)
    problems = []
    for name in (*_PART_SIZES, "image", "instruction", "terminate"):
        key = mapping.get(name, "")
        if not key:
            problems.append(f"mapping.{name} is empty" + (
                f" (write {ABSENT!r} if the dataset does not record it)"
                if name in _PART_DIMS else ""))
            continue
        if key == ABSENT:
            if name not in _PART_DIMS:
                problems.append(f"mapping.{name} cannot be {ABSENT!r}")
            continue
        path, index = parse_key(key)
        if path not in paths:
            problems.append(f"mapping.{name}={key!r}: no feature {path!r}")
            continue
        if name in _PART_SIZES:
            count = _num_values(tuple(paths[path].shape), index)
            if count != _PART_SIZES[name]:
                problems.append(f"mapping.{name}={key!r} has {count} values, needs "
                                f"{_PART_SIZES[name]}")
        if name == "image" and not path.startswith("steps/"):
            problems.append(f"mapping.image={key!r} must be a step feature (steps/...)")
    wrist = mapping.get("wrist_image", "")
    if wrist:   # optional: a second (wrist) camera; "" = the robot has none
        path, index = parse_key(wrist)
        if index is not None or not path.startswith("steps/"):
            problems.append(f"mapping.wrist_image={wrist!r} must be a step feature "
                            "(steps/..., no index), or '' if the robot has no wrist camera")
        elif path not in paths:
            problems.append(f"mapping.wrist_image={wrist!r}: no feature {path!r} (write '' if "
                            "the robot has no wrist camera)")
    kind = mapping.get("terminate_kind", "one_hot")
    if kind not in ("one_hot", "scalar"):
        problems.append(f"mapping.terminate_kind={kind!r}: use one_hot or scalar")
    if problems:
        raise ValueError(
            f"Robot source {source_name!r} ({builder.info.full_name}) does not match its "
            "mapping:\n  - " + "\n  - ".join(problems)
            + "\nThe dataset has these keys:\n  " + "\n  ".join(
                f"{p}  {tuple(f.shape)} {f.dtype.name if hasattr(f.dtype, 'name') else f.dtype}"
                for p, f in sorted(paths.items()))
            + "\nFix config.data.sources." + source_name + ".mapping (see "
            "data_pipelines/mappings.py).")


def _get(tree, path, prefix_to_drop=""):
    node = tree
    for part in path[len(prefix_to_drop):].split("/"):
        node = node[part]
    return node


def _select(tree, key, prefix_to_drop=""):
    path, index = parse_key(key)
    value = _get(tree, path, prefix_to_drop)
    if index is None:
        return value
    return value[..., index]


def _values(tensor, size):
    return tf.reshape(tf.cast(tensor, tf.float32), [size])


def step_action(step, mapping):
    """The 8-d RT-2 action in robot units (terminate 0/1) from one step's features; parts
    mapped as ABSENT are zeros."""
    def part(name):
        if mapping[name] == ABSENT:
            return tf.zeros([_PART_SIZES[name]], tf.float32)
        return _values(_select(step, mapping[name], "steps/"), _PART_SIZES[name])

    translation, rotation = part("translation"), part("rotation")
    if mapping["gripper"] == ABSENT:
        gripper = tf.zeros([1], tf.float32)
    else:
        gripper = part("gripper") * float(mapping.get("gripper_scale", 1.0)) + float(
            mapping.get("gripper_offset", 0.0))
    if mapping["terminate"] == ABSENT:
        return tf.concat([tf.zeros([1], tf.float32), translation, rotation, gripper], axis=0)
    terminate = _select(step, mapping["terminate"], "steps/")
    if mapping.get("terminate_kind", "one_hot") == "one_hot":
        terminate = tf.reshape(terminate, [-1])[int(mapping.get("terminate_index", 0))]
    terminate = tf.cast(tf.cast(tf.reshape(terminate, []), tf.float32) > 0.5, tf.float32)
    return tf.concat([terminate[None], translation, rotation, gripper], axis=0)


def _image_decoders(mapping):
    """Keeps encoded images (the camera and, if mapped, the wrist camera) encoded until after
    filtering/shuffling (decoded in the mixture)."""
    tree = {}
    for key in ("image", "wrist_image"):
        if not mapping.get(key, ""):
            continue
        path, _ = parse_key(mapping[key])
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tfds.decode.SkipDecoding()
    return tree


def read_options(builder, shuffle_files, seed, skip_unreadable=False):
    """as_dataset kwargs: seeded file shuffling (none for datasets written in a fixed order).

    With `skip_unreadable` the split's recorded length is not asserted: a truncated shard then
    ends early (its unreadable tail skipped) instead of raising at the end of every pass, which
    under `ignore_errors` + `repeat` spun forever without yielding. tfds' automatic in-memory
    cache of small datasets is used for shuffled (training) reads only: evaluation reads part of
    a split (`take`), which left a partly filled cache and TensorFlow's warning about it."""
    extra = dict(assert_cardinality=False) if skip_unreadable else {}
    extra["try_autocache"] = bool(shuffle_files)
    if builder.info.disable_shuffling:
        return dict(shuffle_files=False,
                    read_config=tfds.ReadConfig(interleave_cycle_length=1, **extra))
    return dict(shuffle_files=shuffle_files,
                read_config=tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4,
                                            **extra))


def read_episodes(builder, mapping, split, *, shuffle_files, seed, skip_unreadable):
    """The split's episodes, images left encoded; `split`: a split string or even_splits entry."""
    ds = builder.as_dataset(split=split, decoders=_image_decoders(mapping),
                            **read_options(builder, shuffle_files, seed, skip_unreadable))
    if skip_unreadable:
        ds = ds.ignore_errors(log_warning=False)
    return ds


def robot_steps(episodes, mapping, counters=None, with_images=True, wrist=False):
    """Episodes → finite steps {image (encoded or uint8), instruction, action f32[8]}, plus
    `wrist_image` when `wrist` is set and the mapping names one.

    Zero-length episodes produce nothing and steps with a NaN/inf action are dropped; both are
    counted in `counters` (data_pipelines.stats.Counters) when given.
    """
    instruction_key = mapping["instruction"]
    step_level_instruction = instruction_key.startswith("steps/")
    wrist_key = mapping.get("wrist_image", "") if with_images and wrist else ""

    def to_steps(episode):
        steps = episode["steps"]
        episode_instruction = (None if step_level_instruction
                               else tf.reshape(_select(episode, instruction_key), []))

        def one_step(step):
            out = {"action": step_action(step, mapping)}
            if with_images:
                out["image"] = _select(step, mapping["image"], "steps/")
                out["instruction"] = (tf.reshape(_select(step, instruction_key, "steps/"), [])
                                      if step_level_instruction else episode_instruction)
            if wrist_key:
                out["wrist_image"] = _select(step, wrist_key, "steps/")
            return out

        steps = steps.map(one_step)
        if counters is not None:
            steps = steps.concatenate(tf.data.Dataset.from_tensors(_end_marker(steps)))
            steps = steps.scan(tf.constant(0, tf.int64), _count_empty(counters)).filter(
                lambda step: step["action"][0] >= 0.0)
        return steps

    def finite(step):
        ok = tf.reduce_all(tf.math.is_finite(step["action"]))
        if counters is not None:
            counters.add("nonfinite_steps", 1 - tf.cast(ok, tf.int64))
        return ok

    return episodes.flat_map(to_steps).filter(finite)


def _end_marker(steps):
    """An element like the steps' with terminate -1: marks the end of an episode for counting."""
    marker = tf.nest.map_structure(
        lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype), steps.element_spec)
    marker["action"] = tf.fill([8], -1.0)
    return marker


def _count_empty(counters):
    """scan fn: counts episodes whose end marker (terminate -1) comes first."""
    def step(num_seen, element):
        is_marker = element["action"][0] < 0.0
        counters.add("empty_episodes",
                     tf.cast(tf.logical_and(is_marker, num_seen == 0), tf.int64))
        counters.add("episodes", tf.cast(is_marker, tf.int64))
        return tf.where(is_marker, tf.constant(0, tf.int64), num_seen + 1), element
    return step


def split_for_process(split, process_index, process_count):
    """This process's disjoint part of `split` (whole examples, contiguous file ranges)."""
    if process_count <= 1:
        return split
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def log_source(name, builder, split):
    info = builder.info
    try:
        num = info.splits[split].num_examples
    except Exception:  # a split string tfds cannot size without reading: not worth failing on
        num = "?"
    logging.info("Robot source %s: %s split %s (%s episodes).", name, info.full_name, split, num)
