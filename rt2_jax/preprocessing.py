"""Observation -> model input: the rules that training and inference share.

One place states how a raw observation becomes what the model sees, so the tf.data pipeline
(`data_pipelines`), `rt2_jax.policy.Policy` and the policy server cannot drift apart:

- **Image**: uint8 [H, W, 3] of any size -> uint8 [size, size, 3] by the config's aspect mode
  (`config.data.image_aspect`): `squash` (resize both sides), `pad` (letterbox: keep the aspect
  ratio, centre, black bars, TensorFlow's `resize_with_pad` layout) or `center_crop` (the
  largest centred square). Resizing is antialiased bilinear (a triangle kernel widened by the
  downscale factor), then rounded and clipped to uint8. The training pipeline runs TensorFlow's
  `tf.image.resize(..., antialias=True)` inside its graph; here it is `jax.image.resize(...,
  method="linear", antialias=True)`, the same algorithm (tested to agree within 1 grey level,
  which float rounding at .5 allows), jitted once per input shape.
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


def pad_layout(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left) of a letterboxed image, exactly as
    tf.image.resize_with_pad computes them (float32 math)."""
    f_h, f_w, f_size = np.float32(height), np.float32(width), np.float32(size)
    ratio = max(f_w / f_size, f_h / f_size)
    resized_h_f, resized_w_f = f_h / ratio, f_w / ratio
    resized_h, resized_w = int(np.floor(resized_h_f)), int(np.floor(resized_w_f))
    top = max(0, int(np.floor((f_size - resized_h_f) / np.float32(2))))
    left = max(0, int(np.floor((f_size - resized_w_f) / np.float32(2))))
    return resized_h, resized_w, top, left


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _resize(image: jax.Array, size: int, aspect: str, layout: tuple) -> jax.Array:
    """uint8 [h, w, 3] -> uint8 [size, size, 3] (compiled once per input shape and mode)."""
    pixels = image.astype(jnp.float32)
    resize = functools.partial(jax.image.resize, method="linear", antialias=True)
    if aspect == "squash":
        out = resize(pixels, (size, size, 3))
    elif aspect == "pad":
        resized_h, resized_w, top, left = layout
        inner = resize(pixels, (resized_h, resized_w, 3))
        out = jnp.zeros((size, size, 3), jnp.float32)
        out = jax.lax.dynamic_update_slice(out, inner, (top, left, 0))
    else:  # center_crop
        top, left, side = layout
        out = resize(pixels[top:top + side, left:left + side], (size, size, 3))
    return jnp.clip(jnp.round(out), 0.0, 255.0).astype(jnp.uint8)


def resize_image(image, size: int, aspect: str = "squash") -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [size, size, 3] as the training pipeline prepares an image
    (without augmentation); see the module docstring."""
    image = check_image(image)
    height, width = image.shape[:2]
    check_aspect(aspect)
    layout = ()
    if aspect == "pad":
        layout = pad_layout(height, width, size)
        if layout[0] < 1 or layout[1] < 1:
            raise ValueError(f"image of shape {image.shape} is too thin to letterbox into "
                             f"{size}x{size} (it would resize to {layout[0]}x{layout[1]}).")
    elif aspect == "center_crop":
        side = min(height, width)
        layout = ((height - side) // 2, (width - side) // 2, side)
    return np.asarray(_resize(image, int(size), aspect, layout))


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
