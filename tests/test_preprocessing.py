"""The shared observation -> model-input rules: the policy's path (rt2_jax.preprocessing, no
TensorFlow) against TensorFlow's resize, and against what the training pipeline actually feeds
the model for the same raw RLDS observations."""

import data_fixtures
import numpy as np
import pytest
import tensorflow as tf

from configs import tiny
from data_pipelines import mixture
from rt2_jax import actions as actions_lib
from rt2_jax import policy as policy_lib
from rt2_jax import preprocessing
from rt2_jax import tokenizer as tokenizer_lib


def structured_image(rng, shape):
    image = rng.integers(0, 256, (*shape, 3), np.uint8)
    image[: shape[0] // 2] //= 3                       # some structure besides noise
    image[:, : shape[1] // 3, 1] = 250
    return image


def assert_close_images(ours, ref, what):
    """Equal up to float rounding at .5 boundaries: <= 1 grey level, on < 0.5% of values."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.uint8, what
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1, what
    assert (diff > 0).mean() < 0.005, what


@pytest.mark.parametrize("aspect", preprocessing.ASPECT_MODES)
def test_resize_matches_tensorflow(aspect):
    rng = np.random.default_rng(1)
    for shape, size in (((128, 128), 64), ((100, 160), 64), ((150, 90), 48), ((40, 52), 64),
                        ((480, 640), 64), ((256, 320), 224), ((7, 300), 32),
                        # [size, size / 2] halves of a side_by_side wrist-camera image
                        ((150, 200), (64, 32)), ((84, 84), (224, 112)), ((480, 640), (48, 24))):
        if aspect == "pad" and min(shape) * min(np.atleast_1d(size)) < max(shape):
            continue   # too thin to letterbox (refused, tested below)
        image = structured_image(rng, shape)
        ref = mixture.resize_image(tf.constant(image), size, aspect)
        ref = tf.cast(tf.clip_by_value(tf.round(ref), 0.0, 255.0), tf.uint8).numpy()
        assert_close_images(preprocessing.resize_image(image, size, aspect), ref, (shape, size))


def test_bad_aspect_and_too_thin_letterbox_are_refused():
    with pytest.raises(ValueError, match="image_aspect='stretch'"):
        preprocessing.resize_image(np.zeros((8, 8, 3), np.uint8), 8, "stretch")
    with pytest.raises(ValueError, match="too thin to letterbox"):
        preprocessing.resize_image(np.zeros((1, 300, 3), np.uint8), 32, "pad")


INSTRUCTIONS = (
    "pick up the red block",
    "mets la tasse de café crème près du gâteau 🍰, s'il te plaît",   # accents and an emoji
    "move the blue ball " + "very carefully and then " * 20 + "stop",   # longer than the prompt
)


@pytest.mark.parametrize("aspect", preprocessing.ASPECT_MODES)
def test_training_pipeline_and_policy_feed_the_model_the_same_inputs(aspect, tmp_path):
    """Raw RLDS observations (odd-sized images, unicode and over-long instructions) through the
    tf.data pipeline's eval split, and the same raw observations through Policy.prepare: the
    prompt ids and masks are identical, the images agree to float rounding."""
    rng = np.random.default_rng(7)
    shape = (75, 133)
    raw = {}

    def images(episode, t):
        raw[episode, t] = structured_image(rng, shape)
        return raw[episode, t]

    lengths = (3, 2, 4)
    robot_dir = data_fixtures.write_fake_fractal(tmp_path / "robot", lengths=lengths,
                                                 image_shape=(*shape, 3), images=images,
                                                 instructions=INSTRUCTIONS)
    vqa_dir = data_fixtures.write_fake_vqa(tmp_path / "vqa")
    config = tiny.get_config()
    config.data = data_fixtures.data_config(robot_dir, vqa_dir, batch=4).data
    config.data.image_aspect = aspect
    config.data.eval.global_batch_size = 4
    config.tokenizer.model_path = ""
    mix = mixture.build_mixture(config, split="val", progress=False)
    rows = {k: [] for k in ("image", "encoder_tokens", "encoder_mask")}
    for batch in mix:
        keep = batch["is_robot"] & batch["valid"]
        for k in rows:
            rows[k].extend(batch[k][keep])
    expected = [(raw[e, t], INSTRUCTIONS[e % len(INSTRUCTIONS)])
                for e, n in enumerate(lengths) for t in range(n)]
    assert len(rows["image"]) == len(expected) == sum(lengths)

    tok = tokenizer_lib.Tokenizer(None)   # its own tokenizer object, as a robot would load it
    policy = policy_lib.Policy(None, config,
                               actions_lib.ActionTokenizer(mix.action_bounds, tok, "integers"))
    truncated = 0
    for i, (image, instruction) in enumerate(expected):
        pixels, tokens, mask = policy.prepare(image, instruction)
        assert_close_images(pixels[0], rows["image"][i], (aspect, i))
        np.testing.assert_array_equal(tokens[0], rows["encoder_tokens"][i], err_msg=str(i))
        np.testing.assert_array_equal(mask[0], rows["encoder_mask"][i], err_msg=str(i))
        truncated += bool(mask[0].all())
    assert truncated >= 1   # the long instruction filled the prompt: truncation agrees too
