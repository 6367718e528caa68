"""Inference from an export directory: camera image + instruction -> 8-dim robot action.

    policy = Policy.from_export("exports/tiny")
    action = policy.act(image, "pick up the red block")   # float32[8], robot units
    actions = policy.act_batch(images, instructions)      # float32[B, 8]

The observation is prepared exactly as training prepared it (without augmentation): the image is
resized to `config.image_size` with the pipeline's aspect mode (`config.data.image_aspect`:
squash, pad or center_crop), rounded to uint8, and the prompt is `tokenizer.robot_prompt(...)`
encoded to `config.max_prompt_len` ids followed by EOS (`data_pipelines.mixture.PROMPT_ADD_EOS`).
The resize reimplements TensorFlow's antialiased bilinear resize (`tf.image.resize(...,
antialias=True)`, a triangle kernel stretched by the downscale factor, weights normalized over
the pixels inside the image) in numpy, so a robot needs no TensorFlow to preprocess.

Actions come from the jitted masked decode loop (`decoding.Decoder`): only action-bin tokens can
be produced, so every action is valid (terminate 0 or 1, continuous dims at bin centres inside
the export's bounds). Batches are padded up to a power of two so a changing number of
observations compiles at most log2(max batch) + 1 loops.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import jax
import numpy as np

from rt2_jax import actions as actions_lib
from rt2_jax import decoding
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.models.vlm import VLM

ASPECT_MODES = ("squash", "pad", "center_crop")
PROMPT_ADD_EOS = True  # as data_pipelines.mixture.PROMPT_ADD_EOS (no TensorFlow import here)


# ---------------------------------------------------------------------------------------------
# Image preprocessing (numpy port of data_pipelines.mixture.resize_image)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out_size, in_size]: TensorFlow's ScaleAndTranslate weights for an antialiased
    triangle (bilinear) kernel with scale out/in and no translation."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))  # antialias: widen the kernel on downscale
    radius = np.float32(1.0) * kernel_scale
    weights = np.zeros((out_size, in_size), np.float32)
    for x in range(out_size):
        sample = np.float32(x + 0.5) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = min(max(math.ceil(sample - radius - np.float32(0.5)), 0), in_size - 1)
        end = min(max(math.floor(sample + radius - np.float32(0.5)), 0), in_size - 1) + 1
        sources = np.arange(start, end, dtype=np.float32)
        position = (sources + np.float32(0.5) - sample) / kernel_scale
        row = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(position)).astype(np.float32)
        total = row.sum(dtype=np.float32)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            row = row / total
        weights[x, start:end] = row
    return weights


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8/float [h, w, 3] -> float32 [height, width, 3], antialiased bilinear."""
    rows = _resize_weights(image.shape[0], height)
    cols = _resize_weights(image.shape[1], width)
    pixels = image.astype(np.float32)
    vertical = np.tensordot(rows, pixels, axes=(1, 0))                   # [height, w, 3]
    return np.tensordot(vertical, cols, axes=(1, 1)).transpose(0, 2, 1)  # [height, width, 3]


def _pad_layout(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left) exactly as tf.image.resize_with_pad (float32 math)."""
    f_h, f_w, f_size = np.float32(height), np.float32(width), np.float32(size)
    ratio = max(f_w / f_size, f_h / f_size)
    resized_h_f, resized_w_f = f_h / ratio, f_w / ratio
    resized_h, resized_w = int(np.floor(resized_h_f)), int(np.floor(resized_w_f))
    top = max(0, int(np.floor((f_size - resized_h_f) / np.float32(2))))
    left = max(0, int(np.floor((f_size - resized_w_f) / np.float32(2))))
    return resized_h, resized_w, top, left


def resize_image(image: np.ndarray, size: int, aspect: str = "squash") -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [size, size, 3] as the training pipeline prepares an image:
    `data_pipelines.mixture.resize_image(image, size, aspect)`, then round and clip to uint8."""
    image = check_image(image)
    height, width = image.shape[:2]
    if aspect == "squash":
        out = _resize(image, size, size)
    elif aspect == "pad":
        resized_h, resized_w, top, left = _pad_layout(height, width, size)
        if resized_h < 1 or resized_w < 1:
            raise ValueError(f"image of shape {image.shape} is too thin to letterbox into "
                             f"{size}x{size} (it would resize to {resized_h}x{resized_w}).")
        out = np.zeros((size, size, 3), np.float32)
        out[top:top + resized_h, left:left + resized_w] = _resize(image, resized_h, resized_w)
    elif aspect == "center_crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        out = _resize(image[top:top + side, left:left + side], size, size)
    else:
        raise ValueError(f"image aspect mode {aspect!r}: use one of {ASPECT_MODES}.")
    return np.clip(np.round(out), 0.0, 255.0).astype(np.uint8)


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


def check_instruction(instruction) -> str:
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}: "
                        f"{instruction!r}.")
    if not instruction.strip():
        raise ValueError("instruction is empty; pass the task, e.g. 'pick up the red block'.")
    return instruction


# ---------------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------------


def _bucket(batch: int) -> int:
    """The padded batch size: the next power of two."""
    return 1 << (batch - 1).bit_length()


def _pad_to_bucket(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pads arrays of the same batch size to `_bucket(batch)` rows by repeating the first row,
    so the decode loop compiles once per power of two."""
    batch = arrays[0].shape[0]
    extra = _bucket(batch) - batch
    if not extra:
        return arrays
    return tuple(np.concatenate([x, np.repeat(x[:1], extra, axis=0)]) for x in arrays)


class Policy:
    """An exported RT-2 model as a robot policy (see the module docstring)."""

    def __init__(self, params, config, action_tokenizer: actions_lib.ActionTokenizer, *,
                 sampling: decoding.Sampling | None = None, seed: int = 0,
                 step: int | None = None):
        """`params`: the model parameters (as exported); `config`: the experiment config;
        `sampling`: None or `decoding.Sampling()` for greedy decoding, temperature > 0 samples
        with a PRNG key derived from `seed` (a fresh one per call); `step`: the training step
        the parameters come from, if known."""
        self.config = config
        self.step = step
        self.params = params
        self.image_size = int(config.image_size)
        data = config.get("data") or {}
        self.image_aspect = str(data.get("image_aspect", "squash"))
        if self.image_aspect not in ASPECT_MODES:
            raise ValueError(f"config.data.image_aspect={self.image_aspect!r}: use one of "
                             f"{ASPECT_MODES}.")
        self.max_prompt_len = int(config.max_prompt_len)
        self.action_tokenizer = action_tokenizer
        self.tokenizer = action_tokenizer.tokenizer
        self.model = VLM.from_config(config)
        self.decoder = decoding.Decoder(self.model, action_tokenizer,
                                        int(config.model.vocab_size))
        self.sampling = sampling if sampling is not None else decoding.Sampling()
        self._rng = jax.random.PRNGKey(seed)

    @classmethod
    def from_export(cls, export_dir: str, *, sampling: decoding.Sampling | None = None,
                    seed: int = 0) -> Policy:
        """Loads params, config, tokenizer and action bounds written by `python -m
        rt2_jax.export`."""
        from rt2_jax import checkpoints  # orbax + TensorFlow gfile, only needed to load

        export_dir = os.fspath(export_dir)
        if "://" not in export_dir and not os.path.isdir(export_dir):
            raise FileNotFoundError(f"export directory {export_dir!r} does not exist. Create one "
                                    "with `python -m rt2_jax.export --workdir=... --out=...`.")
        params, config, stats = checkpoints.load_export(export_dir)
        try:
            bounds = actions_lib.ActionBounds.from_json_dict(stats["bounds"])
            mapping = stats.get("mapping") or config.actions.mapping
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"action_stats.json in {export_dir} is malformed ({err}); "
                             "re-export the workdir.") from err
        tok = tokenizer_lib.Tokenizer(config.tokenizer.model_path)
        step = stats.get("step")  # absent in exports written before it was recorded
        return cls(params, config, actions_lib.ActionTokenizer(bounds, tok, mapping),
                   sampling=sampling, seed=seed, step=None if step is None else int(step))

    # --- preprocessing ---

    def preprocess_image(self, image) -> np.ndarray:
        """uint8 [H, W, 3] (any size) -> uint8 [image_size, image_size, 3] as in training."""
        return resize_image(image, self.image_size, self.image_aspect)

    def encode_prompts(self, instructions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32 [B, max_prompt_len], mask bool [B, max_prompt_len]) of robot prompts."""
        prompts = [tokenizer_lib.robot_prompt(check_instruction(i)) for i in instructions]
        return self.tokenizer.encode_batch(prompts, self.max_prompt_len, add_eos=PROMPT_ADD_EOS)

    def prepare(self, image, instruction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One observation as model inputs with a batch dim of 1: (pixels uint8 [1, S, S, 3],
        tokens int32 [1, max_prompt_len], mask bool [1, max_prompt_len]); stack several along
        axis 0 and pass them to `decode` (what the server's batching does)."""
        pixels = self.preprocess_image(check_image(image))[None]
        tokens, mask = self.encode_prompts([check_instruction(instruction)])
        return pixels, tokens, mask

    # --- acting ---

    def act(self, image, instruction: str) -> np.ndarray:
        """One observation -> float32[8] (terminate, dx, dy, dz, droll, dpitch, dyaw, gripper)."""
        return self.predict([check_image(image)], [check_instruction(instruction)])["action"][0]

    def act_batch(self, images, instructions: Sequence[str]) -> np.ndarray:
        """uint8 [B, H, W, 3] (or a list of [H, W, 3] images of any sizes) and B instructions
        -> float32 [B, 8]."""
        return self.predict(images, instructions)["action"]

    def predict(self, images, instructions: Sequence[str]) -> dict[str, np.ndarray]:
        """Like act_batch, with the decoded bins and token ids: {'action' float32 [B, 8],
        'bins' int32 [B, 8], 'ids' int32 [B, 8]}."""
        if isinstance(images, np.ndarray | jax.Array):
            if np.ndim(images) != 4:
                raise ValueError(f"images must have shape [B, H, W, 3] (or be a list of "
                                 f"[H, W, 3] images), got {np.shape(images)}; use act for one.")
            images = list(np.asarray(images))
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of str; use act for one "
                            "observation.")
        images, instructions = list(images), list(instructions)
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions.")
        if not images:
            raise ValueError("act_batch needs at least one observation.")
        pixels = np.stack([self.preprocess_image(i) for i in images])
        tokens, mask = self.encode_prompts(instructions)
        return self.decode(pixels, tokens, mask)

    def decode(self, pixels: np.ndarray, tokens: np.ndarray, mask: np.ndarray):
        """Preprocessed batch -> {'action', 'bins', 'ids'}; pads the batch to a power of two."""
        batch = pixels.shape[0]
        out = self.decoder.actions(self.params, *_pad_to_bucket(pixels, tokens, mask),
                                   rng=self._next_rng(), sampling=self.sampling)
        return {k: np.asarray(v[:batch]) for k, v in out.items()}

    def answer(self, images, questions: Sequence[str]) -> list[str]:
        """Free-text answers to VQA questions about images (the web-data prompt
        `Q: {question} A:`, greedy or the policy's sampling); batches pad to a power of two."""
        images, questions = list(images), list(questions)
        if len(images) != len(questions) or not images:
            raise ValueError(f"need as many questions as images (>= 1), got {len(images)} "
                             f"images and {len(questions)} questions.")
        pixels = np.stack([self.preprocess_image(check_image(i)) for i in images])
        prompts = [tokenizer_lib.vqa_prompt(check_instruction(q)) for q in questions]
        tokens, mask = self.tokenizer.encode_batch(prompts, self.max_prompt_len,
                                                   add_eos=PROMPT_ADD_EOS)
        return self.decoder.text(self.params, *_pad_to_bucket(pixels, tokens, mask),
                                 rng=self._next_rng(), sampling=self.sampling)[:len(images)]

    def _next_rng(self):
        """A fresh PRNG key per call when sampling; None for greedy decoding."""
        if self.sampling.temperature <= 0:
            return None
        self._rng, rng = jax.random.split(self._rng)
        return rng

    @property
    def num_compilations(self) -> int:
        """How many times the decode loop has been traced (compiled) so far."""
        return self.decoder.num_compilations

    def bin_centres(self) -> np.ndarray:
        """float32 [7, 256]: every value a continuous dim can take."""
        return self.action_tokenizer.bin_centres()
