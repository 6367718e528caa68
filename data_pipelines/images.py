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
        image = tf.image.crop_to_bounding_box(image, *_center_crop_box(image, height, width))
        return tf.image.resize(image, [height, width], antialias=True)
    raise AssertionError(aspect)  # check_aspect accepted a mode this function lacks


def _center_crop_box(image, height, width):
    """(top, left, crop_h, crop_w): the largest centred region of the target's shape
    (preprocessing.crop_layout's integer arithmetic, in the graph)."""
    shape = tf.shape(image)
    crop_h = tf.minimum(shape[0], shape[1] * height // width)
    crop_w = tf.minimum(shape[1], shape[0] * width // height)
    return (shape[0] - crop_h) // 2, (shape[1] - crop_w) // 2, crop_h, crop_w


def augment_crop(image, seed, augment, with_box=False):
    """Random resized crop (area fraction and aspect ratio ranges from the config); with
    `with_box`, also the box (top, left, height, width) it cut."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=(augment.crop_scale_min, 1.0),
        aspect_ratio_range=(augment.crop_ratio_min, augment.crop_ratio_max),
        min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    cropped = tf.slice(image, begin, crop_size)
    if with_box:
        return cropped, (begin[0], begin[1], crop_size[0], crop_size[1])
    return cropped


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
    return _prepare(image, seed, data, size, train, None)[0]


def prepare_image_and_point(image, point, seed, data, size, train):
    """`prepare_image`, and where a point (or points) of the input image lands in the output.

    `point`: float32 [..., 2], (x, y) as fractions of the decoded image's width and height (x
    from the left, y from the top). Returns (uint8 image, float32 [..., 2] (u, v) keypoint
    coordinates of the point in the output image, bool [...] in_view): u in [-1, 1] to the
    right, v in [-1, 1] upwards, the ViT's keypoint convention
    (rt2_jax.models.vit.keypoint_grid); in_view is False when the augmentation's crop or the
    center_crop aspect mode cut the point off."""
    image, (px, py, in_view) = _prepare(image, seed, data, size, train, point)
    height, width = preprocessing.target_shape(size)
    uv = tf.stack([2.0 * px / width - 1.0, 1.0 - 2.0 * py / height], -1)
    in_view = in_view & (px >= 0) & (px <= width) & (py >= 0) & (py <= height)
    return image, uv, in_view


def _shape_f(image):
    shape = tf.cast(tf.shape(image), tf.float32)
    return shape[0], shape[1]


def _prepare(image, seed, data, size, train, point):
    """(image, (px, py, in_view)): the point in pixels of the current image, followed through
    each crop and resize (None when no point is given)."""
    image = decode_image(image)
    pixel = None
    if point is not None:
        h, w = _shape_f(image)
        pixel = (point[..., 0] * w, point[..., 1] * h, tf.ones_like(point[..., 0], tf.bool))
    if train and data.augment.enabled:
        image, box = augment_crop(image, seed, data.augment, with_box=True)
        if pixel is not None:
            pixel = _crop_point(pixel, box)
    if pixel is not None:
        pixel = _resize_point(pixel, image, size, data.image_aspect)
    image = resize_image(image, size, data.image_aspect)
    if train and data.augment.enabled:
        image = augment_color(image, seed + 2, data.augment)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [*preprocessing.target_shape(size), 3]), pixel


def _crop_point(pixel, box):
    """A pixel point after cropping the box (top, left, height, width) out of its image."""
    px, py, ok = pixel
    top, left, h, w = (tf.cast(b, tf.float32) for b in box)
    px, py = px - left, py - top
    return px, py, ok & (px >= 0) & (px <= w) & (py >= 0) & (py <= h)


def _resize_point(pixel, image, size, aspect):
    """A pixel point of `image` in the output of resize_image(image, size, aspect): the same
    geometry as resize_image (the letterbox layout is tf.image.resize_with_pad's, which
    preprocessing.pad_layout repeats)."""
    target_h, target_w = preprocessing.target_shape(size)
    height, width = float(target_h), float(target_w)
    h, w = _shape_f(image)
    if aspect == "center_crop":
        box = _center_crop_box(image, target_h, target_w)
        pixel = _crop_point(pixel, box)
        h, w = tf.cast(box[2], tf.float32), tf.cast(box[3], tf.float32)
    px, py, ok = pixel
    if aspect == "pad":
        ratio = tf.maximum(w / width, h / height)
        resized_h, resized_w = tf.floor(h / ratio), tf.floor(w / ratio)
        top = tf.maximum(0.0, tf.floor((height - h / ratio) / 2.0))
        left = tf.maximum(0.0, tf.floor((width - w / ratio) / 2.0))
        return px * resized_w / w + left, py * resized_h / h + top, ok
    return px * width / w, py * height / h, ok


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
