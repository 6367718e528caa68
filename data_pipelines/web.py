"""Web sources (VQA and captioning, from TFDS) → {image, prompt, answers}.

A source is named by `tfds_name` + `data_dir` (a prepared TFDS dataset; nothing is downloaded)
or by `builder_dir` (a dataset version directory). Field names come from the source's mapping:
`image`, `question` (VQA), `answers` (VQA: a string or a list of strings) or `caption`
(captioning: a string or a list). Prompts use the templates of rt2_jax.tokenizer.
"""
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import robot
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.sim import vqa

KINDS = ("vqa", "caption")
ANSWER_CHOICES = ("first", "random")


def open_web_builder(source, source_name):
    if source.get("builder_dir"):
        return robot.open_builder(source.builder_dir)
    if not source.get("tfds_name"):
        raise ValueError(f"Web source {source_name!r} needs `builder_dir` or `tfds_name` "
                         "(+ `data_dir`) in config.data.sources.")
    try:
        builder = tfds.builder(source.tfds_name, data_dir=source.get("data_dir") or None)
    except Exception as e:  # tfds raises several types for unknown names
        raise FileNotFoundError(f"Web source {source_name!r}: cannot open TFDS dataset "
                                f"{source.tfds_name!r} ({e}).") from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"Web source {source_name!r}: TFDS dataset {source.tfds_name!r} is not prepared in "
            f"{builder.data_dir!r}. Prepare it first (`tfds build {source.tfds_name} "
            "--data_dir=...`); the pipeline never downloads.")
    return builder


def _text_fields(kind):
    return ("question", "answers") if kind == "vqa" else ("caption",)


def validate_web_mapping(builder, kind, mapping, source_name):
    if kind not in KINDS:
        raise ValueError(f"Web source {source_name!r}: kind {kind!r} is not one of {KINDS}.")
    paths = robot.feature_paths(builder.info.features)
    missing = [f"mapping.{field}={mapping.get(field, '')!r}"
               for field in ("image", *_text_fields(kind))
               if robot.parse_key(mapping.get(field, "") or "?")[0] not in paths]
    if missing:
        raise ValueError(
            f"Web source {source_name!r} ({builder.info.full_name}) does not match its mapping; "
            f"missing: {', '.join(missing)}.\nThe dataset has these keys:\n  "
            + "\n  ".join(sorted(paths))
            + f"\nFix config.data.sources.{source_name}.mapping.")


def read_web(builder, mapping, split, *, shuffle_files, seed, skip_unreadable):
    path, _ = robot.parse_key(mapping["image"])
    decoders = tfds.decode.SkipDecoding()
    for part in reversed(path.split("/")):
        decoders = {part: decoders}
    ds = builder.as_dataset(split=split, decoders=decoders,
                            **robot.read_options(builder, shuffle_files, seed, skip_unreadable))
    return ds.ignore_errors(log_warning=False) if skip_unreadable else ds


def template_join(template, field, value):
    before, after = template.split("{" + field + "}")
    return tf.strings.join([before, tf.strings.strip(value), after])


def web_examples(ds, kind, mapping, counters=None):
    """Records → {image, prompt, answers string[K]}; examples with no text are dropped, counted."""
    def convert(record):
        image = robot._select(record, mapping["image"])
        if kind == "vqa":
            question = tf.reshape(robot._select(record, mapping["question"]), [])
            prompt = template_join(tokenizer_lib.VQA_PROMPT, "question", question)
            answers = robot._select(record, mapping["answers"])
            has_text = tf.strings.length(tf.strings.strip(question)) > 0
        else:
            prompt = tf.constant(tokenizer_lib.caption_prompt())
            answers = robot._select(record, mapping["caption"])
            has_text = tf.constant(True)
        answers = tf.strings.strip(tf.reshape(answers, [-1]))
        answers = tf.boolean_mask(answers, tf.strings.length(answers) > 0)
        return {"image": image, "prompt": prompt, "answers": answers,
                "ok": tf.logical_and(has_text, tf.size(answers) > 0)}

    def keep(example):
        if counters is not None:
            counters.add("empty_text_steps", 1 - tf.cast(example["ok"], tf.int64))
        return example["ok"]

    def drop_flag(example):
        return {k: v for k, v in example.items() if k != "ok"}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).filter(keep).map(drop_flag)


def pick_answer(answers, mode, seed):
    """One answer of string[K>=1]: the first, or uniformly at random (stateless, from seed)."""
    if mode == "first":
        return answers[0]
    if mode != "random":
        raise ValueError(f"answer_choice {mode!r} is not one of {ANSWER_CHOICES}.")
    index = tf.random.stateless_uniform([], seed, maxval=tf.size(answers), dtype=tf.int32)
    return answers[index]


def parse_points(answer, max_points: int):
    """An answer string → (float32 [max_points, 2] (x, y) as fractions of the image's width
    and height, x from the left and y from the top, at the centres of the answer's grid cells;
    bool [max_points]: which of them the answer gives). A point answer is 2k whitespace-
    separated integers 0..255, k = 1..max_points ("x y", "x1 y1 x2 y2"); its points fill the
    first k rows. Anything else (text, an odd count, more than max_points points, a number
    >= 256) gives no point. The same rule as rt2_jax.sim.vqa.parse_locations (which scores
    pointing)."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    width = 2 * max_points
    parts = tf.strings.split(tf.strings.strip(answer))
    count = tf.size(parts)
    padded = tf.concat([parts, tf.fill([width], "0")], 0)[:width]
    ok = ((count > 0) & (count % 2 == 0) & (count <= width)
          & tf.reduce_all(tf.strings.regex_full_match(padded, "[0-9]+")))
    # Leading zeros and long digit strings: compare the value, not the length.
    numbers = tf.strings.to_number(tf.where(ok, padded, "0"), tf.float64)
    ok = ok & tf.reduce_all(numbers < vqa.LOCATION_BINS)
    given = ok & (tf.range(max_points) < count // 2)
    points = tf.reshape(tf.cast((numbers + 0.5) / vqa.LOCATION_BINS, tf.float32),
                        [max_points, 2])
    return (tf.ensure_shape(tf.where(given[:, None], points, 0.0), [max_points, 2]),
            tf.ensure_shape(given, [max_points]))


def parse_point(answer):
    """An answer string → (float32 [2] (x, y) as fractions of the image's width and height, x
    from the left and y from the top, at the centre of the answer's grid cell; bool: whether
    the answer is a point, two whitespace-separated integers 0..255). Anything else is
    (0, 0), False: `parse_points` with one point."""
    points, given = parse_points(answer, 1)
    return points[0], given[0]
