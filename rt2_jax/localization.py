"""Localization as a training loss: web pointing questions train the image tower's keypoint 0.

RT-2's VLMs know where things are before they see a robot: PaLI-X was pretrained with object
detection and localization. In this project the image tower can carry spatial-softmax keypoints
(`config.model.vit.keypoints`, conditioned on the prompt with `keypoint_query`), and a web VQA
source whose answers are points ("x y": two integers 0..255 on a 256 grid over the image, x from
the left, y from the top, the toy world's pointing format, `rt2_jax.sim.vqa.location_answer`)
can supervise them directly: with `config.train.locate_weight` > 0 and the source's
`locate_answers=True`, keypoint `LOCATE_KEYPOINT` of such a row is regressed onto the answer's
point (squared error in keypoint coordinates, u to the right, v up, in [-1, 1]; the data
pipeline follows the point through the augmentation's crop and the resize) next to the text
loss on the same answer. With `config.train.locate_points` = 2, answers that name two things
("point to the red block and the card showing 3" -> "x1 y1 x2 y2") also train keypoint 1 on the
second point: a place instruction names the same object and card, and keypoint 1 is where the
card is. A robot prompt ("pick up the X") then asks keypoint 0 for the thing it
names, which is what the pointing question "point to the X" taught it, including for objects
the robot data never shows.

Batch keys (with the loss on, both splits): `locate_uv` float32 [B, P, 2] and `locate_mask`
float32 [B, P] (1 where a row has point p in view), P = `num_points(config)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rt2_jax import preprocessing

LOCATE_KEYPOINT = 0
BATCH_KEYS = ("locate_uv", "locate_mask")


def weight(config) -> float:
    """`config.train.locate_weight` (0 = off), checked against the model it needs."""
    w = float((config.get("train") or {}).get("locate_weight", 0.0))
    if w < 0:
        raise ValueError(f"train.locate_weight must be >= 0, got {w}")
    if w == 0:
        return 0.0
    keypoints = int(config.model.vit.get("keypoints", 0))
    if keypoints <= LOCATE_KEYPOINT:
        raise ValueError(f"train.locate_weight={w} trains ViT keypoint {LOCATE_KEYPOINT}: set "
                         f"config.model.vit.keypoints >= 1 (got {keypoints}), and "
                         "keypoint_query=True so that it can follow the prompt.")
    if preprocessing.wrist_camera(config):
        raise ValueError("train.locate_weight > 0 with a wrist camera: pointing targets are "
                         "defined on one camera's image; set config.model.wrist_camera='' or "
                         "the weight to 0.")
    if not any(s.get("locate_answers", False) for s in config.data.sources.values()):
        raise ValueError(f"train.locate_weight={w} but no data source has "
                         "locate_answers=True (a VQA source whose answers are 'x y' points, "
                         "e.g. config.data.sources.vqa.locate_answers=True for the toy world).")
    num_points(config)
    return w


def num_points(config) -> int:
    """`config.train.locate_points` (default 1): points of an answer that train keypoints
    0..P-1, checked against the keypoints the image tower has."""
    p = int((config.get("train") or {}).get("locate_points", 1))
    keypoints = int(config.model.vit.get("keypoints", 0))
    if not 1 <= p <= max(keypoints, 1):
        raise ValueError(f"train.locate_points={p} must be in [1, vit.keypoints={keypoints}] "
                         "(point p of a pointing answer trains keypoint p)")
    return p


def enabled(config) -> bool:
    return weight(config) > 0


def keypoints(intermediates) -> jax.Array:
    """The image tower's sown keypoints [B, K, 2] from `mutable=["intermediates"]` state."""
    try:
        return intermediates["intermediates"]["img"]["keypoints"][0]
    except KeyError as e:
        raise ValueError("the model sowed no image keypoints (config.model.vit.keypoints is "
                         "0?)") from e


def pointing_keypoints(intermediates, batch) -> jax.Array:
    """Keypoints 0..P-1 [B, P, 2] of the sown intermediates, P = the batch's points per row:
    keypoint p answers for point p (the train step's loss and the evaluator both read this)."""
    return keypoints(intermediates)[:, :batch["locate_uv"].shape[1]]


def sums(predicted_uv: jax.Array, batch) -> dict[str, jax.Array]:
    """Summed squared error (keypoint units) and distance (image units: half the keypoint
    distance, so 0.1 = a tenth of the image's side) of `predicted_uv` [B, P, 2] (keypoints
    0..P-1) against the batch's points [B, P, 2], over the points a row has."""
    mask = batch["locate_mask"].astype(jnp.float32)
    diff = predicted_uv.astype(jnp.float32) - batch["locate_uv"].astype(jnp.float32)
    sq = jnp.sum(diff * diff, -1)
    dist = jnp.sqrt(sq + 1e-12) / 2.0
    return {"locate_sq_sum": (sq * mask).sum(), "locate_dist_sum": (dist * mask).sum(),
            "locate_count": mask.sum()}


def summarize(s: dict) -> dict[str, float]:
    """{"locate_dist": mean distance in image units, "locate_rows": points counted} when any row
    had a point."""
    count = float(s.get("locate_count", 0.0))
    if count <= 0:
        return {}
    return {"locate_dist": float(s["locate_dist_sum"]) / count, "locate_rows": count}
