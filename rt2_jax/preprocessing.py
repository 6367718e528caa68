"""Observation -> model input: the rules that training and inference share.

One place states how a raw observation becomes what the model sees, so the tf.data pipeline
(`data_pipelines`), `rt2_jax.policy.Policy` and the policy server cannot drift apart:

- **Image**: uint8 [H, W, 3] of any size -> uint8 [size, size, 3] by the config's aspect mode
  (`config.data.image_aspect`): `squash` (resize both sides), `pad` (letterbox: keep the aspect
  ratio, centre, black bars, TensorFlow's `resize_with_pad` layout) or `center_crop` (the
  largest centred region of the target's shape: a square for [size, size]). Resizing is
  antialiased bilinear (a triangle kernel widened by the downscale factor), then rounded and
  clipped to uint8. The training pipeline runs TensorFlow's
  `tf.image.resize(..., antialias=True)` inside its graph; here it is `jax.image.resize(...,
  method="linear", antialias=True)`, the same algorithm (tested to agree within 1 grey level,
  which float rounding at .5 allows), jitted once per input shape.
- **Wrist camera** (`config.model.wrist_camera`, off when empty): `side_by_side` resizes the main
  and the wrist image each to [size, size / 2] (same aspect rule) and puts them next to each
  other, main on the left, in one [size, size, 3] image; `tokens` resizes the wrist image to
  [size, size, 3] like the main one (the model runs its ViT on both). A robot without a wrist
  camera gets a black wrist image and `wrist_present` False; the model sees that flag.
- **Prompt**: `tokenizer.robot_prompt(instruction)` (or `vqa_prompt`), encoded to
  `config.max_prompt_len` ids followed by EOS (`PROMPT_ADD_EOS`), padded with 0.
- **Action normalization** (training targets for the L1 metric): dims 1..7 clipped to the
  action bounds and scaled to [-1, 1]; terminate stays 0/1 (`normalize_actions`; its inverse
  for decoded bins is `rt2_jax.actions.normalized_from_bins`).

TensorFlow-free (JAX and numpy), so the robot side and the server need no TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rt2_jax import tokenizer as tokenizer_lib

ASPECT_MODES = ("squash", "pad", "center_crop")
PROMPT_ADD_EOS = True  # T5/PaLI encoders see the prompt followed by EOS


def check_aspect(aspect: str) -> str:
    if aspect not in ASPECT_MODES:
        raise ValueError(f"config.data.image_aspect={aspect!r}: use one of {ASPECT_MODES}.")
    return aspect


# ---------------------------------------------------------------------------------------------
# Wrist camera
# ---------------------------------------------------------------------------------------------

SIDE_BY_SIDE = "side_by_side"
TOKENS = "tokens"
WRIST_MODES = (SIDE_BY_SIDE, TOKENS)


def check_wrist_camera(mode: str, image_size: int | None = None) -> str:
    """`mode` ("" = no wrist camera) if valid for `image_size`; ValueError otherwise."""
    mode = str(mode or "")
    if mode and mode not in WRIST_MODES:
        raise ValueError(f"config.model.wrist_camera={mode!r}: use one of {WRIST_MODES}, or "
                         "'' for no wrist camera.")
    if mode == SIDE_BY_SIDE and image_size is not None and int(image_size) % 2:
        raise ValueError(f"config.model.wrist_camera='side_by_side' needs an even "
                         f"config.image_size (two halves of size/2), got {image_size}.")
    return mode


def wrist_camera(config) -> str:
    """The experiment config's wrist-camera mode (`config.model.wrist_camera`), "" when off or
    when the config predates the option."""
    model = config.get("model") or {}
    return check_wrist_camera(model.get("wrist_camera", ""), config.get("image_size"))


def half_size(size: int) -> tuple[int, int]:
    """(height, width) of each camera's half of a side_by_side image of side `size`."""
    return int(size), int(size) // 2


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def check_image(image) -> np.ndarray:
    """The image as a uint8 [H, W, 3] array; ValueError/TypeError naming the problem."""
    if not isinstance(image, np.ndarray | jax.Array):
        raise TypeError(f"image must be a numpy uint8 array of shape [H, W, 3], got "
                        f"{type(image).__name__}.")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8 (RGB pixels 0..255), got {image.dtype}; "
                        "convert float images with np.clip(np.round(x * 255), 0, 255)"
                        ".astype(np.uint8) if they are in [0, 1].")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape [H, W, 3] (one RGB image), got {image.shape}; "
                         "use act_batch for a batch.")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has an empty side: shape {image.shape}.")
    return image


def target_shape(size) -> tuple[int, int]:
    """`size` (a side, or (height, width)) as (height, width)."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def pad_layout(height: int, width: int, size) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left) of an image letterboxed into `size` (a side or
    (height, width)), exactly as tf.image.resize_with_pad computes them (float32 math)."""
    target_h, target_w = target_shape(size)
    f_h, f_w = np.float32(height), np.float32(width)
    f_th, f_tw = np.float32(target_h), np.float32(target_w)
    ratio = max(f_w / f_tw, f_h / f_th)
    resized_h_f, resized_w_f = f_h / ratio, f_w / ratio
    resized_h, resized_w = int(np.floor(resized_h_f)), int(np.floor(resized_w_f))
    top = max(0, int(np.floor((f_th - resized_h_f) / np.float32(2))))
    left = max(0, int(np.floor((f_tw - resized_w_f) / np.float32(2))))
    return resized_h, resized_w, top, left


def crop_layout(height: int, width: int, size) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w): the largest centred region of `size`'s shape (a square for
    a side), in integer arithmetic the TensorFlow pipeline repeats."""
    target_h, target_w = target_shape(size)
    crop_h = min(height, width * target_h // target_w)
    crop_w = min(width, height * target_w // target_h)
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _resize(image: jax.Array, target: tuple[int, int], aspect: str, layout: tuple) -> jax.Array:
    """uint8 [h, w, 3] -> uint8 [*target, 3] (compiled once per input shape and mode)."""
    pixels = image.astype(jnp.float32)
    resize = functools.partial(jax.image.resize, method="linear", antialias=True)
    if aspect == "squash":
        out = resize(pixels, (*target, 3))
    elif aspect == "pad":
        resized_h, resized_w, top, left = layout
        inner = resize(pixels, (resized_h, resized_w, 3))
        out = jnp.zeros((*target, 3), jnp.float32)
        out = jax.lax.dynamic_update_slice(out, inner, (top, left, 0))
    else:  # center_crop
        top, left, crop_h, crop_w = layout
        out = resize(pixels[top:top + crop_h, left:left + crop_w], (*target, 3))
    return jnp.clip(jnp.round(out), 0.0, 255.0).astype(jnp.uint8)


def resize_image(image, size, aspect: str = "squash") -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [size, size, 3] (or [height, width, 3] for size = (height,
    width)) as the training pipeline prepares an image (without augmentation); see the module
    docstring."""
    image = check_image(image)
    height, width = image.shape[:2]
    check_aspect(aspect)
    target = target_shape(size)
    layout = ()
    if aspect == "pad":
        layout = pad_layout(height, width, target)
        if layout[0] < 1 or layout[1] < 1:
            raise ValueError(f"image of shape {image.shape} is too thin to letterbox into "
                             f"{target[0]}x{target[1]} (it would resize to "
                             f"{layout[0]}x{layout[1]}).")
    elif aspect == "center_crop":
        layout = crop_layout(height, width, target)
    return np.asarray(_resize(image, target, aspect, layout))


def side_by_side(image, wrist_image, size: int, aspect: str = "squash") -> np.ndarray:
    """The `side_by_side` wrist-camera input: uint8 [size, size, 3] with the main image resized
    into the left half and the wrist image (None: black, no wrist camera) into the right."""
    half = half_size(size)
    left = resize_image(image, half, aspect)
    right = (np.zeros((*half, 3), np.uint8) if wrist_image is None
             else resize_image(wrist_image, half, aspect))
    return np.concatenate([left, right], axis=1)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def check_instruction(instruction) -> str:
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}: "
                        f"{instruction!r}.")
    if not instruction.strip():
        raise ValueError("instruction is empty; pass the task, e.g. 'pick up the red block'.")
    return instruction


def encode_prompts(tokenizer: tokenizer_lib.Tokenizer, prompts: Sequence[str],
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt texts (already templated) -> (ids int32 [B, max_len], mask bool [B, max_len])."""
    return tokenizer.encode_batch(list(prompts), max_len, add_eos=PROMPT_ADD_EOS)


def encode_robot_prompts(tokenizer: tokenizer_lib.Tokenizer, instructions: Sequence[str],
                         max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Instructions -> the robot prompt's (ids, mask), as training encodes them."""
    return encode_prompts(tokenizer, [tokenizer_lib.robot_prompt(check_instruction(i))
                                      for i in instructions], max_len)


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


def normalize_actions(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Robot units [B, 8] -> dims 1..7 clipped to [low, high] and scaled to [-1, 1]; terminate
    (dim 0) unchanged. `low`, `high`: the 7 continuous dims' bounds (ActionBounds.limits())."""
    action = np.asarray(action)
    clipped = np.clip(action[:, 1:], low, high)
    scaled = (clipped - low) / (high - low) * 2.0 - 1.0
    return np.concatenate([action[:, :1], scaled], axis=1).astype(np.float32)
