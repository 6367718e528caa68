"""Localization pretraining of the image tower's keypoints: "where is the <object>, where is the
gripper?" answered by two keypoints, trained by regression on their positions.

RT-2 starts from a VLM whose image tower already knows what and where things are (PaLI-X was
pretrained with detection and localization tasks). The toy world's equivalent for the tiny
models: keypoint `OBJECT_KEYPOINT` of the ViT's keypoint head (`model.vit.keypoints` >= 2,
conditioned on the prompt with `model.vit.keypoint_query`, so it can find the object a prompt
names among others) is regressed onto the named object's table position and keypoint
`GRIPPER_KEYPOINT` onto the gripper's, with a squared-error loss on the sown keypoint
coordinates. The other keypoints, the transformer and the decoder are not changed by it (the
prompt's token embeddings are: they make the query). A keypoint is (u, v) in [-1, 1], u to the
right, v up; with the fixed camera the image is the table, so (u, v) = 2 (x, y) - 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

OBJECT_KEYPOINT, GRIPPER_KEYPOINT = 0, 1


def table_to_keypoint(xy) -> np.ndarray:
    """Table points [..., 2] (x right, y up, in [0, 1]) -> keypoint coordinates (u, v) in
    [-1, 1] of the fixed camera's image (which shows exactly the table)."""
    return (2.0 * np.asarray(xy, np.float32) - 1.0).astype(np.float32)


def locate_targets(points) -> np.ndarray:
    """The imitation probe's per-frame (gripper xy, task object xy, name) -> float32 [T, 2, 2]:
    row OBJECT_KEYPOINT the object's keypoint coordinates, row GRIPPER_KEYPOINT the gripper's."""
    if not len(points):
        raise ValueError("locate_targets needs at least one frame's points")
    out = np.zeros((len(points), 2, 2), np.float32)
    out[:, OBJECT_KEYPOINT] = table_to_keypoint([p[1] for p in points])
    out[:, GRIPPER_KEYPOINT] = table_to_keypoint([p[0] for p in points])
    return out


def check_model(config, camera: str = "fixed") -> None:
    """Clear errors for a config or camera the localization loss cannot train."""
    keypoints = int(config.model.vit.get("keypoints", 0))
    if keypoints < 2:
        raise ValueError(f"localization pretraining trains keypoints {OBJECT_KEYPOINT} (the named "
                         f"object) and {GRIPPER_KEYPOINT} (the gripper): set "
                         f"config.model.vit.keypoints >= 2 (got {keypoints})")
    if camera != "fixed":
        raise ValueError(f"localization targets are table positions seen by the fixed camera; "
                         f"got camera={camera!r}")


def make_fns(model, learning_rate: float, weight_decay: float = 1e-4):
    """(optimizer, jitted step(params, opt_state, image, tokens, mask, targets) -> (params,
    opt_state, loss), jitted predict(params, image, tokens, mask) -> keypoints [B, 2, 2])."""
    import jax
    import jax.numpy as jnp
    import optax

    def predict(params, image, tokens, mask):
        _, inter = model.apply({"params": params}, image, tokens, mask, method="encode",
                               mutable=["intermediates"])
        keypoints = inter["intermediates"]["img"]["keypoints"][0]     # [B, K, 2]
        return keypoints[:, (OBJECT_KEYPOINT, GRIPPER_KEYPOINT)].astype(jnp.float32)

    def loss_fn(params, image, tokens, mask, targets):
        return jnp.mean(jnp.sum((predict(params, image, tokens, mask) - targets) ** 2, -1))

    # Weight decay on the image tower only: AdamW would otherwise shrink every parameter this
    # loss does not train (zero gradients give zero Adam updates, but not zero decay).
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay,
                            mask=lambda params: {k: jax.tree.map(lambda _, on=k == "img": on, v)
                                                 for k, v in params.items()})

    @jax.jit
    def step(params, opt_state, image, tokens, mask, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, image, tokens, mask, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, step, jax.jit(predict)


def distances(predicted: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean distance in table units (half the keypoint distance) of the object and gripper
    keypoints from their targets, both [B, 2, 2]."""
    d = np.linalg.norm(np.asarray(predicted) - np.asarray(targets), axis=-1).mean(0) / 2.0
    return {"object": round(float(d[OBJECT_KEYPOINT]), 4),
            "gripper": round(float(d[GRIPPER_KEYPOINT]), 4)}


def grounding(predicted: np.ndarray, scene_xy, named: np.ndarray, actions: np.ndarray,
              quantum: float) -> dict[str, float]:
    """How far the two keypoints go towards the action, per frame [T]:
    `named_nearest`, the fraction of frames whose object keypoint is nearer the named object
    than any other object in the scene (`scene_xy[t]` [N_t, 2] table positions, `named[t]`
    the named one's index); and, with whole-step motion (`quantum` > 0), `rule_dx`/`rule_dy`,
    the fraction whose expert label (`actions` [T, 8], dx and dy in table units) equals what a
    fixed rule reads off the keypoints: the sign of object minus gripper along the axis, 0
    within half a step. The rule on the true positions reads the expert's dx, dy on (nearly)
    every frame of a pick's approach; on the keypoints it says how much of dx, dy they hold."""
    predicted = np.asarray(predicted, np.float64)
    obj = (predicted[:, OBJECT_KEYPOINT] + 1.0) / 2.0          # back to table units
    grip = (predicted[:, GRIPPER_KEYPOINT] + 1.0) / 2.0
    if not len(obj) == len(scene_xy) == len(named) == len(actions):
        raise ValueError(f"grounding needs one scene, named index and action per frame: got "
                         f"{len(obj)} keypoints, {len(scene_xy)} scenes, {len(named)} names, "
                         f"{len(actions)} actions")
    nearest = [int(np.argmin(np.linalg.norm(np.asarray(xy) - obj[t], axis=-1)) == named[t])
               for t, xy in enumerate(scene_xy)]
    out = {"named_nearest": round(float(np.mean(nearest)), 3)}
    if quantum > 0:
        actions = np.asarray(actions, np.float64)
        for axis, name in enumerate(("dx", "dy")):
            label = np.sign(np.round(actions[:, 1 + axis] / quantum))
            diff = obj[:, axis] - grip[:, axis]
            rule = np.where(np.abs(diff) < quantum / 2, 0.0, np.sign(diff))
            out[f"rule_{name}"] = round(float(np.mean(rule == label)), 3)
    return out


def pretrain(model, params, *, images, tokens, mask, targets, heldout, steps: int,
             batch_size: int, learning_rate: float, seed: int, log_every: int,
             emit: Callable[[dict], None]):
    """`steps` of localization regression on (images, tokens, mask, targets [T, 2, 2]) from
    `params`; `heldout` = (images, tokens, mask, targets) scored every `log_every` steps and at
    the end (`emit({"locate_step", "locate_dist": {"object", "gripper"}, ...})`). Returns the
    trained params (every other parameter unchanged)."""
    if steps < 1:
        raise ValueError(f"localization pretraining needs steps >= 1, got {steps}")
    optimizer, step_fn, predict = make_fns(model, learning_rate)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for i in range(1, steps + 1):
        rows = rng.integers(0, len(images), size=batch_size)
        params, opt_state, loss = step_fn(params, opt_state, images[rows], tokens[rows],
                                          mask[rows], targets[rows])
        if i % log_every == 0 or i == steps:
            h_images, h_tokens, h_mask, h_targets = heldout
            got = np.asarray(predict(params, h_images, h_tokens, h_mask))
            emit({"locate_step": i, "seconds": round(time.time() - t0),
                  "locate_loss": round(float(loss), 5),
                  "locate_dist": distances(got, h_targets)})
    return params
