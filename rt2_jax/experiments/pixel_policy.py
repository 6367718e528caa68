"""A reference policy that is not a VLM: a small CNN trained on the imitation probe's expert frames.

    python -m rt2_jax.experiments.pixel_policy --tasks=pick --objects=1,1 --episodes=2000 \
        --steps=2000 [--grid=0.1] [--seed=1] [--json=out.jsonl]

What a network built for the job (Levine et al.'s visuomotor layout) reaches from the same 64 px
frames, labels and budget is the bar a VLM recipe in `imitation_probe` is compared with: three
3x3 convs (the ViT keypoint head's), 16 spatial-softmax keypoints (with a learned inverse
temperature starting at `--softmax_scale`, 10 by default: at 1 the keypoints start at the image
centre and dx sat at the majority label for 1,000+ steps) plus the mean conv features, a
two-layer MLP, and one softmax head per action dim over its whole-step values (terminate and
gripper: 2 classes; dx, dy, dz: -q, 0, +q). `--shift_px` translates training frames at random.
The expert moves in whole steps (`--move_quantum`, default 0.1, which these heads need).
Reports, as JSON lines: held-out per-dim accuracy next to the majority label's every
`--log_every` steps, and closed-loop success on `--eval_episodes` new episodes per task every
`--eval_every` steps (the imitation probe's seeds).
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from rt2_jax.experiments import imitation_probe as probe

DIMS = ("terminate", "dx", "dy", "dz", "gripper")
CLASSES = (2, 3, 3, 3, 2)
NUM_KEYPOINTS = 16
HIDDEN = 256


def define_flags() -> None:
    flags.DEFINE_list("tasks", ["pick"], "Task kinds of the expert episodes (cycled).")
    flags.DEFINE_integer("episodes", 2000, "Expert episodes to train on.")
    flags.DEFINE_integer("heldout_episodes", 40, "Expert episodes whose frames are held out.")
    flags.DEFINE_integer("steps", 2000, "Training steps.")
    flags.DEFINE_integer("batch_size", 32, "Frames per step.")
    flags.DEFINE_float("learning_rate", 1e-3, "AdamW learning rate.")
    flags.DEFINE_integer("log_every", 250, "Held-out accuracy every N steps.")
    flags.DEFINE_integer("eval_every", 1000, "Closed-loop evaluation every N steps.")
    flags.DEFINE_integer("eval_episodes", 40, "Closed-loop episodes per task and evaluation.")
    flags.DEFINE_integer("max_episode_steps", 60, "Closed-loop step limit.")
    flags.DEFINE_integer("image_size", 64, "Rendered image side (>= 40).")
    flags.DEFINE_float("move_quantum", 0.1, "Expert motion in multiples of this (> 0).")
    flags.DEFINE_float("noise_std", 0.005, "Expert motion noise (executed, not labelled).")
    flags.DEFINE_float("grid", 0.0, "Scenes on multiples of this (TabletopEnv(grid=...)).")
    flags.DEFINE_list("objects", [], "min,max objects per scene (default: the world's).")
    flags.DEFINE_integer("seed", 0, "Expert noise, initialization and batch order.")
    flags.DEFINE_float("softmax_scale", 10.0, "Initial inverse temperature of the keypoints' "
                       "spatial softmax (learned).")
    flags.DEFINE_integer("shift_px", 0, "Training frames shifted by up to this many pixels "
                         "(random, edge-padded; 0 = off). Shifts keep every offset between "
                         "things in the image, which is all an action depends on.")
    flags.DEFINE_string("json", "", "Also append the JSON lines to this file.")
    flags.DEFINE_string("save", "", "Write the trained parameters to this .npz (the keypoint "
                        "head can then start a VLM's: imitation_probe --init_keypoints).")


def labels(actions: np.ndarray, quantum: float) -> np.ndarray:
    """[T, 8] whole-step actions -> [T, 5] class ids (terminate, dx, dy, dz, gripper)."""
    steps = np.round(actions[:, 1:4] / quantum)
    if np.any(np.abs(steps) > 1) or not np.allclose(steps * quantum, actions[:, 1:4], atol=1e-5):
        raise ValueError("the pixel policy's heads need whole-step labels (-q, 0 or +q per "
                         "motion dim); use an expert with move_quantum = q")
    return np.concatenate([(actions[:, :1] > 0.5), steps + 1, (actions[:, 7:] > 0.5)],
                          axis=1).astype(np.int32)


def to_actions(classes: np.ndarray, quantum: float) -> np.ndarray:
    """[B, 5] class ids -> [B, 8] actions (rotations 0)."""
    out = np.zeros((len(classes), 8), np.float32)
    out[:, 0] = classes[:, 0]
    out[:, 1:4] = (classes[:, 1:4] - 1) * quantum
    out[:, 7] = classes[:, 4]
    return out


def random_shift(images: np.ndarray, max_px: int, rng: np.random.Generator) -> np.ndarray:
    """Each image [B, S, S, C] translated by its own random (dx, dy) in [-max_px, max_px]
    pixels; the uncovered border repeats the edge (DrQ / RAD-style augmentation)."""
    if max_px <= 0:
        return images
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_px, max_px), (max_px, max_px), (0, 0)), mode="edge")
    top, left = rng.integers(0, 2 * max_px + 1, size=(2, b))
    return np.stack([padded[i, top[i]:top[i] + h, left[i]:left[i] + w] for i in range(b)])


def save_params(params, path: str) -> None:
    """The parameter tree as an .npz, keys joined by '/'."""
    from rt2_jax.models import params as params_lib

    np.savez(path, **{k: np.asarray(v) for k, v in params_lib.flatten(params).items()})


def keypoint_head(path: str, num_keypoints: int) -> dict:
    """A saved policy's conv keypoint head as a VLM image tower's (`vit.keypoints` = 16):
    {keypoint_Conv_i, keypoint_score: {kernel, bias}, keypoint_log_scale}."""
    from rt2_jax.models import vit

    if num_keypoints != NUM_KEYPOINTS:
        raise ValueError(f"the pixel policy has {NUM_KEYPOINTS} keypoints; the VLM asks for "
                         f"{num_keypoints} (set vit.keypoints={NUM_KEYPOINTS})")
    with np.load(path) as saved:
        head = {f"keypoint_Conv_{i}": {n: saved[f"params/Conv_{i}/{n}"] for n in ("kernel", "bias")}
                for i in range(len(vit.KEYPOINT_CHANNELS))}
        head["keypoint_score"] = {n: saved[f"params/Dense_0/{n}"] for n in ("kernel", "bias")}
        head["keypoint_log_scale"] = np.full(NUM_KEYPOINTS, saved["params/log_softmax_scale"],
                                             np.float32)
    return head


def with_keypoint_head(img_params: dict, path: str, num_keypoints: int) -> dict:
    """`img_params` (a VLM's image tower) with its keypoint head replaced by the saved policy's,
    each array in the dtype and sharding of the one it replaces."""
    import jax

    from rt2_jax.models import vit

    def put(new, old):
        if np.shape(new) != old.shape:
            raise ValueError(f"{path}: a keypoint head array of shape {np.shape(new)} cannot "
                             f"replace the image tower's {old.shape}")
        return jax.device_put(np.asarray(new, old.dtype), old.sharding)

    img = dict(img_params)
    head = keypoint_head(path, num_keypoints)
    convs = sorted(k for k in img if k.startswith("keypoint_Conv_"))
    if convs != sorted(k for k in head if k.startswith("keypoint_Conv_")):
        raise ValueError(f"{path}: the pixel policy's keypoint head has the default "
                         f"vit.keypoint_convs {vit.KEYPOINT_CHANNELS}; this image tower's convs "
                         f"are {convs}: build it with the default layout")
    for name, value in head.items():
        img[name] = jax.tree.map(put, value, img[name])
    return img


def make_model(softmax_scale: float = 10.0):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from rt2_jax.models import vit

    class PixelPolicy(nn.Module):
        """uint8 images [B, S, S, 3] -> per-dim logits, concatenated [B, sum(CLASSES)]."""

        @nn.compact
        def __call__(self, image):
            x = image.astype(jnp.float32) / 127.5 - 1.0
            for channels, stride in vit.KEYPOINT_CHANNELS:
                x = nn.gelu(nn.Conv(channels, (3, 3), strides=stride, padding="SAME")(x))
            b, h, w, _ = x.shape
            # A learned inverse temperature (Levine et al.'s alpha), initialised at softmax_scale.
            log_scale = self.param("log_softmax_scale",
                                   lambda _: jnp.log(jnp.float32(softmax_scale)))
            logits = nn.Dense(NUM_KEYPOINTS)(x) * jnp.exp(log_scale)
            prob = jax.nn.softmax(logits.reshape(b, h * w, NUM_KEYPOINTS), 1)
            uv = jnp.einsum("bnk,nc->bkc", prob, jnp.asarray(vit.keypoint_grid(h, w)))
            y = jnp.concatenate([uv.reshape(b, -1), x.mean((1, 2))], axis=1)
            y = nn.gelu(nn.Dense(HIDDEN)(y))
            y = nn.gelu(nn.Dense(HIDDEN)(y))
            return nn.Dense(sum(CLASSES))(y)

    return PixelPolicy()


def run(*, tasks, episodes, heldout_episodes, steps, batch_size, learning_rate, log_every,
        eval_every, eval_episodes, max_episode_steps, image_size, move_quantum, noise_std, grid,
        objects, seed, emit, shift_px: int = 0, softmax_scale: float = 10.0,
        save: str = "") -> dict:
    """Trains and reports through `emit(dict)`; returns the last closed-loop report."""
    import jax
    import jax.numpy as jnp
    import optax

    from rt2_jax import sim

    if not softmax_scale > 0 or shift_px < 0:
        raise ValueError(f"need softmax_scale > 0 and shift_px >= 0, got {softmax_scale} and "
                         f"{shift_px}")
    if move_quantum <= 0:
        raise ValueError(f"the pixel policy needs whole-step labels: move_quantum > 0, got "
                         f"{move_quantum}")
    with probe.probe_world(tasks, objects):
        env = sim.TabletopEnv(image_size=image_size, grid=grid)
        expert = sim.ScriptedExpert(env, noise_std=noise_std, seed=seed, move_quantum=move_quantum)
        t0 = time.time()
        images, _, acts = probe.collect(env, expert, tasks, episodes, probe.TRAIN_SEED0)
        h_images, _, h_acts = probe.collect(env, expert, tasks, heldout_episodes,
                                            probe.HELDOUT_SEED0)
        y, h_y = labels(acts, move_quantum), labels(h_acts, move_quantum)
        majority = {d: round(float(np.bincount(h_y[:, i]).max() / len(h_y)), 3)
                    for i, d in enumerate(DIMS)}
        emit({"frames": len(images), "heldout_frames": len(h_images),
              "collect_s": round(time.time() - t0, 1), "majority": majority})

        model = make_model(softmax_scale)
        params = model.init(jax.random.PRNGKey(seed), images[:1])
        optimizer = optax.adamw(learning_rate)
        opt_state = optimizer.init(params)
        splits = np.cumsum(CLASSES)[:-1].tolist()

        def loss_fn(p, x, t):
            parts = jnp.split(model.apply(p, x), splits, axis=1)
            return sum(optax.softmax_cross_entropy_with_integer_labels(logits, t[:, i]).mean()
                       for i, logits in enumerate(parts))

        @jax.jit
        def train_step(p, state, x, t):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, t)
            updates, state = optimizer.update(grads, state, p)
            return optax.apply_updates(p, updates), state, loss

        @jax.jit
        def predict(p, x):
            parts = jnp.split(model.apply(p, x), splits, axis=1)
            return jnp.stack([jnp.argmax(logits, 1) for logits in parts], axis=1)

        def closed_loop(p) -> dict:
            success = {}
            for task in tasks:
                envs = [sim.TabletopEnv(image_size=image_size, grid=grid,
                                        max_episode_steps=max_episode_steps)
                        for _ in range(eval_episodes)]
                obs = [e.reset(seed=probe.EVAL_SEED0 + i, options={"task": task})[0]
                       for i, e in enumerate(envs)]
                live, wins = list(range(eval_episodes)), 0
                while live:
                    classes = np.asarray(predict(p, np.stack([obs[i]["image"] for i in live])))
                    still = []
                    for k, action in zip(live, to_actions(classes, move_quantum), strict=True):
                        obs[k], reward, terminated, truncated, _ = envs[k].step(action)
                        wins += reward > 0
                        if not (terminated or truncated):
                            still.append(k)
                    live = still
                success[task] = wins / eval_episodes
            return success

        rng = np.random.default_rng(seed)
        t0, last = time.time(), {}
        for step in range(1, steps + 1):
            idx = rng.integers(0, len(images), size=batch_size)
            params, opt_state, loss = train_step(
                params, opt_state, random_shift(images[idx], shift_px, rng), y[idx])
            report = {}
            if step % log_every == 0 or step == steps:
                got = np.asarray(predict(params, h_images))
                report.update(loss=round(float(loss), 4), heldout_acc={
                    d: round(float((got[:, i] == h_y[:, i]).mean()), 3)
                    for i, d in enumerate(DIMS)})
            if step % eval_every == 0 or step == steps:
                report["success"] = closed_loop(params)
                last = dict(step=step, **report)
            if report:
                emit(dict(step=step, seconds=round(time.time() - t0), **report))
        if save:
            save_params(params, save)
        return last


def main(argv):
    del argv
    f = flags.FLAGS
    emit = probe.json_emitter(f.json)
    names = ("tasks", "episodes", "heldout_episodes", "steps", "batch_size", "learning_rate",
             "log_every", "eval_every", "eval_episodes", "max_episode_steps", "image_size",
             "move_quantum", "noise_std", "grid", "objects", "seed", "shift_px",
             "softmax_scale", "save")
    emit({"pixel_policy": {n: f[n].value for n in names}})
    run(**{n: f[n].value for n in names}, emit=emit)


if __name__ == "__main__":
    define_flags()
    app.run(main)
