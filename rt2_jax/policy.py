"""Inference from an export directory: camera image + instruction -> 8-dim robot action.

    policy = Policy.from_export("exports/tiny")
    action = policy.act(image, "pick up the red block")   # float32[8], robot units
    actions = policy.act_batch(images, instructions)      # float32[B, 8]

The observation is prepared exactly as training prepared it (without augmentation), by the
rules in `rt2_jax.preprocessing` that the training pipeline shares: the image is resized to
`config.image_size` with the config's aspect mode (`config.data.image_aspect`: squash, pad or
center_crop) and rounded to uint8, and the prompt is `tokenizer.robot_prompt(...)` encoded to
`config.max_prompt_len` ids followed by EOS. No TensorFlow is needed.

An export trained with a wrist camera (`config.model.wrist_camera`) needs the wrist image too:
`act(image, instruction, wrist_image=...)`, `act_batch(images, instructions, wrist_images=[...])`;
a robot without a wrist camera passes `wrist_image=ABSENT` (the model then sees a black wrist image
flagged absent, as training showed it robots without one; an export without a wrist camera
accepts ABSENT too). Leaving it out for a wrist-camera export, or passing a wrist image to an
export without a wrist camera, is an error that says so.

Actions come from the jitted masked decode loop (`decoding.Decoder`): only action-bin tokens can
be produced, so every action is valid (terminate 0 or 1, continuous dims at bin centres inside
the export's bounds). Batches are padded up to a power of two so a changing number of
observations compiles at most log2(max batch) + 1 loops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np

from rt2_jax import actions as actions_lib
from rt2_jax import decoding, preprocessing
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.models.vlm import VLM
from rt2_jax.preprocessing import (  # noqa: F401  (re-exported: the policy's input rules)
    ASPECT_MODES,
    PROMPT_ADD_EOS,
    check_image,
    check_instruction,
    resize_image,
)

# ---------------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------------

# `wrist_image=ABSENT`: this robot has no wrist camera (for an export trained with one).
ABSENT = "absent"


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


def _pad_inputs(pixels, tokens, mask, wrist):
    """`_pad_to_bucket` of the model inputs: (pixels, tokens, mask, wrist dict or None)."""
    names = sorted(wrist or {})
    padded = _pad_to_bucket(pixels, tokens, mask, *(np.asarray(wrist[k]) for k in names))
    return (*padded[:3], dict(zip(names, padded[3:], strict=True)) or None)


def _is_absent(wrist_image) -> bool:
    """True for ABSENT; False for an image (checked later); ValueError for anything else."""
    if isinstance(wrist_image, str) and wrist_image == ABSENT:
        return True
    if wrist_image is None or isinstance(wrist_image, str):
        raise ValueError(f"wrist image {wrist_image!r}: pass a uint8 [H, W, 3] image, or "
                         f"{ABSENT!r} (rt2_jax.policy.ABSENT) for a robot without one.")
    return False


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
        self.dataset: str | None = None   # whose action bounds (from_export sets it)
        self.params = params
        self.image_size = int(config.image_size)
        data = config.get("data") or {}
        self.image_aspect = preprocessing.check_aspect(str(data.get("image_aspect", "squash")))
        self.wrist_camera = preprocessing.wrist_camera(config)   # "" = none
        self.max_prompt_len = int(config.max_prompt_len)
        self.action_tokenizer = action_tokenizer
        self.tokenizer = action_tokenizer.tokenizer
        self.model = VLM.from_config(config)
        self.decoder = decoding.Decoder(self.model, action_tokenizer,
                                        int(config.model.vocab_size))
        self.sampling = sampling if sampling is not None else decoding.Sampling()
        self._rng = jax.random.PRNGKey(seed)

    @classmethod
    def from_export(cls, export_dir: str, *, dataset: str | None = None,
                    sampling: decoding.Sampling | None = None, seed: int = 0) -> Policy:
        """Loads params, config, tokenizer and action bounds written by `python -m
        rt2_jax.export`. An export trained on several robot datasets un-normalizes the decoded
        bins with one dataset's bounds: name it with `dataset` (required then; the error lists
        the names)."""
        from rt2_jax import checkpoints  # orbax + TensorFlow gfile, only needed to load

        export_dir = os.fspath(export_dir)
        if "://" not in export_dir and not os.path.isdir(export_dir):
            raise FileNotFoundError(f"export directory {export_dir!r} does not exist. Create one "
                                    "with `python -m rt2_jax.export --workdir=... --out=...`.")
        params, config, stats = checkpoints.load_export(export_dir)
        datasets = stats.get("datasets") or {}
        if dataset is not None and dataset not in datasets:
            raise ValueError(
                f"dataset={dataset!r} is not one this export was trained on: "
                + (f"choose one of {sorted(datasets)}." if datasets else
                   "it records a single robot dataset's bounds; leave dataset unset."))
        if dataset is None and len(datasets) > 1:
            raise ValueError(f"This export was trained on {len(datasets)} robot datasets "
                             f"{sorted(datasets)}, each with its own action bounds; pass "
                             "dataset=NAME (--dataset) to choose whose units the actions are in.")
        try:
            chosen = datasets[dataset]["bounds"] if dataset is not None else stats["bounds"]
            bounds = actions_lib.ActionBounds.from_json_dict(chosen)
            mapping = stats.get("mapping") or config.actions.mapping
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"action_stats.json in {export_dir} is malformed ({err}); "
                             "re-export the workdir.") from err
        tok = tokenizer_lib.Tokenizer(config.tokenizer.model_path)
        step = stats.get("step")  # absent in exports written before it was recorded
        policy = cls(params, config, actions_lib.ActionTokenizer(bounds, tok, mapping),
                     sampling=sampling, seed=seed, step=None if step is None else int(step))
        policy.dataset = dataset if dataset is not None else (stats.get("default_dataset")
                                                              or None)
        return policy

    # --- preprocessing ---

    def preprocess_image(self, image) -> np.ndarray:
        """uint8 [H, W, 3] (any size) -> uint8 [image_size, image_size, 3] as in training."""
        return resize_image(image, self.image_size, self.image_aspect)

    def encode_prompts(self, instructions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32 [B, max_prompt_len], mask bool [B, max_prompt_len]) of robot prompts."""
        return preprocessing.encode_robot_prompts(self.tokenizer, instructions,
                                                  self.max_prompt_len)

    def prepare_cameras(self, images: list, wrist_images) -> tuple[np.ndarray, dict | None]:
        """Camera images -> (pixels uint8 [B, S, S, 3], the model's wrist inputs or None), by
        the export's wrist-camera mode. `wrist_images`: None (an export without a wrist
        camera), else one uint8 [H, W, 3] image or ABSENT per observation."""
        mode = self.wrist_camera
        if not mode:
            all_absent = isinstance(wrist_images, list | tuple) and all(
                isinstance(w, str) and w == ABSENT for w in wrist_images)
            if wrist_images is not None and not all_absent:
                raise ValueError("A wrist image was given, but this export was trained without "
                                 "a wrist camera (config.model.wrist_camera is empty); call "
                                 "act / act_batch without wrist_image(s).")
            return np.stack([self.preprocess_image(check_image(i)) for i in images]), None
        if wrist_images is None:
            raise ValueError(
                f"This export was trained with a wrist camera (config.model.wrist_camera="
                f"{mode!r}) and the wrist image is missing: pass wrist_image=uint8 [H, W, 3] "
                "to act (wrist_images=[...] to act_batch, one per observation), or "
                "wrist_image=rt2_jax.policy.ABSENT if this robot has no wrist camera.")
        if isinstance(wrist_images, np.ndarray | jax.Array) and np.ndim(wrist_images) == 4:
            wrist_images = list(np.asarray(wrist_images))
        if isinstance(wrist_images, str | np.ndarray | jax.Array):
            raise TypeError("wrist_images must be a list with one uint8 [H, W, 3] image or "
                            "ABSENT per observation (use act's wrist_image for one).")
        wrist_images = list(wrist_images)
        if len(wrist_images) != len(images):
            raise ValueError(f"got {len(images)} images but {len(wrist_images)} wrist images.")
        present = np.array([not _is_absent(w) for w in wrist_images])
        wrist_images = [None if _is_absent(w) else check_image(w) for w in wrist_images]
        if mode == preprocessing.SIDE_BY_SIDE:
            pixels = np.stack([preprocessing.side_by_side(check_image(i), w, self.image_size,
                                                          self.image_aspect)
                               for i, w in zip(images, wrist_images, strict=True)])
            return pixels, {"wrist_present": present}
        black = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        pixels = np.stack([self.preprocess_image(check_image(i)) for i in images])
        wrist = np.stack([black if w is None else self.preprocess_image(w)
                          for w in wrist_images])
        return pixels, {"wrist_image": wrist, "wrist_present": present}

    def prepare(self, image, instruction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One observation as model inputs with a batch dim of 1: (pixels uint8 [1, S, S, 3],
        tokens int32 [1, max_prompt_len], mask bool [1, max_prompt_len]); stack several along
        axis 0 and pass them to `decode` (what the server's batching does). Single-camera
        exports only: with a wrist camera use `predict` / `act`."""
        if self.wrist_camera:
            raise ValueError(f"This export was trained with a wrist camera (config.model."
                             f"wrist_camera={self.wrist_camera!r}); prepare() builds single-"
                             "camera inputs. Use act / act_batch / predict with the wrist "
                             "image(s).")
        pixels = self.preprocess_image(check_image(image))[None]
        tokens, mask = self.encode_prompts([check_instruction(instruction)])
        return pixels, tokens, mask

    # --- acting ---

    def act(self, image, instruction: str, wrist_image=None) -> np.ndarray:
        """One observation -> float32[8] (terminate, dx, dy, dz, droll, dpitch, dyaw, gripper).
        `wrist_image`: uint8 [H, W, 3] or ABSENT, for an export trained with a wrist camera."""
        wrist_images = None if wrist_image is None else [wrist_image]
        return self.predict([check_image(image)], [check_instruction(instruction)],
                            wrist_images)["action"][0]

    def act_batch(self, images, instructions: Sequence[str], wrist_images=None) -> np.ndarray:
        """uint8 [B, H, W, 3] (or a list of [H, W, 3] images of any sizes) and B instructions
        -> float32 [B, 8]. `wrist_images`: B wrist images (each uint8 [H, W, 3] or ABSENT), for
        an export trained with a wrist camera."""
        return self.predict(images, instructions, wrist_images)["action"]

    def predict(self, images, instructions: Sequence[str],
                wrist_images=None) -> dict[str, np.ndarray]:
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
        pixels, wrist = self.prepare_cameras(images, wrist_images)
        tokens, mask = self.encode_prompts(instructions)
        return self.decode(pixels, tokens, mask, wrist)

    def decode(self, pixels: np.ndarray, tokens: np.ndarray, mask: np.ndarray,
               wrist: dict | None = None):
        """Preprocessed batch -> {'action', 'bins', 'ids'}; pads the batch to a power of two.
        `wrist`: the wrist-camera inputs (`prepare_cameras`) of a wrist-camera export."""
        batch = pixels.shape[0]
        *inputs, wrist = _pad_inputs(pixels, tokens, mask, wrist)
        out = self.decoder.actions(self.params, *inputs, rng=self._next_rng(),
                                   sampling=self.sampling, wrist=wrist)
        return {k: np.asarray(v[:batch]) for k, v in out.items()}

    def answer(self, images, questions: Sequence[str]) -> list[str]:
        """Free-text answers to VQA questions about images (the web-data prompt
        `Q: {question} A:`, greedy or the policy's sampling); batches pad to a power of two."""
        images, questions = list(images), list(questions)
        if len(images) != len(questions) or not images:
            raise ValueError(f"need as many questions as images (>= 1), got {len(images)} "
                             f"images and {len(questions)} questions.")
        # Web data has no wrist camera: a wrist-camera export saw it flagged absent.
        pixels, wrist = self.prepare_cameras(
            images, [ABSENT] * len(images) if self.wrist_camera else None)
        prompts = [tokenizer_lib.vqa_prompt(check_instruction(q)) for q in questions]
        tokens, mask = preprocessing.encode_prompts(self.tokenizer, prompts, self.max_prompt_len)
        *inputs, wrist = _pad_inputs(pixels, tokens, mask, wrist)
        return self.decoder.text(self.params, *inputs, rng=self._next_rng(),
                                 sampling=self.sampling, wrist=wrist)[:len(images)]

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
