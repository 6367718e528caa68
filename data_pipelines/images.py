"""Images for the data pipeline, in the tf.data graph: decode, augment (training only),
resize to the model's size by the config's aspect mode, round to uint8.

The resize rule is `rt2_jax.preprocessing`'s (the policy runs the same rule outside
TensorFlow; tests/test_preprocessing.py checks the two agree).
"""
import tensorflow as tf

from rt2_jax import preprocessing


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
