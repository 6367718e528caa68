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
    """uint8 [h, w, 3] → float32 [size, size, 3] (or [height, width, 3] for size = (height,
    width)): squash, pad (letterbox) or center_crop, in the graph
    (`rt2_jax.preprocessing.resize_image` is the same rule outside TensorFlow)."""
    preprocessing.check_aspect(aspect)
    height, width = preprocessing.target_shape(size)
    if aspect == "squash":
        return tf.image.resize(image, [height, width], antialias=True)
    if aspect == "pad":
        return tf.image.resize_with_pad(tf.cast(image, tf.float32), height, width,
                                        antialias=True)
    if aspect == "center_crop":
        # The largest centred region of the target's shape (preprocessing.crop_layout).
        shape = tf.shape(image)
        crop_h = tf.minimum(shape[0], shape[1] * height // width)
        crop_w = tf.minimum(shape[1], shape[0] * width // height)
        image = tf.image.crop_to_bounding_box(image, (shape[0] - crop_h) // 2,
                                              (shape[1] - crop_w) // 2, crop_h, crop_w)
        return tf.image.resize(image, [height, width], antialias=True)
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
    """Encoded or uint8 image → uint8 [size, size, 3] (or [height, width, 3] for size =
    (height, width)): decoded, augmented when training, resized by the config's aspect mode."""
    image = decode_image(image)
    if train and data.augment.enabled:
        image = augment_crop(image, seed, data.augment)
    image = resize_image(image, size, data.image_aspect)
    if train and data.augment.enabled:
        image = augment_color(image, seed + 2, data.augment)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [*preprocessing.target_shape(size), 3])


def camera_inputs(example, seed, data, size, wrist_mode, train):
    """The image inputs of one example by the wrist-camera mode (rt2_jax.preprocessing):
    {"image"} without a wrist camera; {"image", "wrist_present"} for side_by_side (both cameras
    in one image, the wrist on the right); {"image", "wrist_image", "wrist_present"} for tokens.
    An example without "wrist_image" (a robot without one, web data) gets a black wrist image
    and wrist_present False. The wrist image is augmented with its own seed."""
    if not wrist_mode:
        return {"image": prepare_image(example["image"], seed, data, size, train)}
    has_wrist = "wrist_image" in example
    shape = preprocessing.half_size(size) if wrist_mode == preprocessing.SIDE_BY_SIDE else size
    main = prepare_image(example["image"], seed, data, shape, train)
    wrist = (prepare_image(example["wrist_image"], seed + 5, data, shape, train) if has_wrist
             else tf.zeros([*preprocessing.target_shape(shape), 3], tf.uint8))
    present = tf.constant(has_wrist)
    if wrist_mode == preprocessing.SIDE_BY_SIDE:
        return {"image": tf.concat([main, wrist], axis=1), "wrist_present": present}
    return {"image": main, "wrist_image": wrist, "wrist_present": present}
