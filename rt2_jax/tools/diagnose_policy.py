"""Where a toy-world policy goes wrong: its action against the scripted expert's on the expert's
own frames, per task kind and expert phase, and where its keypoints point.

    python -m rt2_jax.tools.diagnose_policy --export=exports/place --episodes=30 \
        [--tasks=pick,place_on_card] [--concepts=seen] [--json]

For each task kind, `--episodes` expert rollouts (seeds `--seed + i`) in the world the export was
trained on (its scene grid and card size, and its expert's move quantum, release and retreat
heights, from the export's config). On every frame the policy decodes an action from the frame and
the instruction, as it would in closed loop, but the expert's action is the one stepped: the policy
is scored on the states a correct episode passes through, so a phase it never learned shows up even
when it fails long before it in closed loop. Each dim's decoded bin is compared with the bin of the
expert's intended action (the clean label the training data carries). Reported per task kind and
expert phase ("above", "descend", "grasp", "lift", "carry", "lower", "release", "done", ...):
frames, and the share of frames whose terminate, dx, dy, dz and gripper bins agree, and `all` (all
8 dims); for place_on_card, the share of the named card's pixels each phase's frames show (an
object held over the card hides most of it at the default card size).

With a fixed camera and an image tower with keypoints, on each rollout's first frame: how far
(in image sides) keypoint 0 is from the task's object and keypoint 1 from the second thing the
instruction names (the card of place_on_card, the target object of move_near): median and the
share within an object's radius (`rt2_jax.sim.vqa.POINT_TOLERANCE`, the pointing answers'
tolerance). Keypoint p is what pointing answers' point p trains (`train.locate_points`).
On every frame, per phase: keypoint 0's distance from the object (which moves once held),
keypoint 1's from the second thing, and the distance from the gripper of the keypoint nearest
it overall (no loss names one; a policy that moves the gripper to things must find it). With
`model.vit.keypoint_action_head`, that readout's argmax bins are scored against the expert like
the decoded ones: when it agrees where the decoder does not, the image tower holds what the
action needs and the decoder does not read it.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np
from absl import app, flags, logging

from rt2_jax import sim
from rt2_jax.sim import render, vqa, world
from rt2_jax.tools.eval_sim import category_tasks, trained_world

DIMS = {"terminate": 0, "dx": 1, "dy": 2, "dz": 3, "gripper": 7}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("export", None, "Export directory (python -m rt2_jax.export).",
                        flag_values=flag_values)
    flags.DEFINE_integer("episodes", 30, "Expert rollouts per task kind.",
                         flag_values=flag_values)
    flags.DEFINE_list("tasks", [], "Task kinds (default: those of the export's robot episodes, "
                      f"else all of {list(world.TASK_KINDS)}).", flag_values=flag_values)
    flags.DEFINE_string("concepts", "seen", f"Scene category, one of {list(world.CONCEPTS)}.",
                        flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the first rollout.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 64, "Frames per policy call.", flag_values=flag_values)
    flags.DEFINE_bool("json", False, "Print the report as one JSON object.",
                      flag_values=flag_values)
    flags.mark_flag_as_required("export", flag_values=flag_values)


def _second_xy(state, task) -> np.ndarray | None:
    """Where the second thing an instruction names is: place_on_card's card, move_near's
    target object; None for tasks that name one thing."""
    if task.kind == "place_on_card":
        return state.card_xy[state.card_index(task.symbol)].copy()
    if task.kind == "move_near":
        return state.obj_xy[state.index_of(task.target)].copy()
    return None


def card_visible(env, image: np.ndarray) -> float:
    """The share of the named card's pixels (place_on_card) that `image`, a frame of `env`'s
    fixed camera, shows as the table's static layer (table and cards) has them: 1 when nothing
    covers the card, less where the gripper, an object or a shadow is drawn over it."""
    state, task = env.unwrapped.state, env.unwrapped.task
    static = env.unwrapped._static
    size = image.shape[0]
    cx, cy = render._to_px(state.card_xy[state.card_index(task.symbol)], size)
    half = state.card_half * size
    x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)), size)
    y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)), size)
    same = np.all(image[y0:y1, x0:x1] == static[y0:y1, x0:x1], axis=-1)
    return float(same.mean())


def export_world(policy) -> dict:
    """The world and expert the policy's robot data came from (its config's data.toy_world;
    the defaults where an older config lacks a field): grid, move_quantum, card_half,
    retreat_z, release_z and camera."""
    return {"grid": trained_world(policy, "grid", 0.0),
            "move_quantum": trained_world(policy, "move_quantum", 0.0),
            "card_half": trained_world(policy, "card_half", world.CARD_HALF),
            "retreat_z": trained_world(policy, "retreat_z", sim.expert.RETREAT_Z),
            "release_z": trained_world(policy, "release_z", sim.expert.RELEASE_Z),
            "camera": trained_world(policy, "camera", "fixed")}


def expert_frames(task_kind: str, *, episodes: int, seed: int, concepts: str, grid: float,
                  move_quantum: float, card_half: float = world.CARD_HALF,
                  retreat_z: float = sim.expert.RETREAT_Z,
                  release_z: float = sim.expert.RELEASE_Z) -> list[dict]:
    """Expert rollouts: per episode the frames, instruction, intended actions, phase names,
    and the first frame's positions of the task's object and second named thing."""
    env = sim.TabletopEnv(concepts=concepts, grid=grid, card_half=card_half)
    expert = sim.ScriptedExpert(env, move_quantum=move_quantum, retreat_z=retreat_z,
                                release_z=release_z)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i, options={"task": task_kind})
        expert.reset(seed=seed + i)
        state, task = env.unwrapped.state, env.unwrapped.task
        second = _second_xy(state, task)
        record = {"instruction": task.instruction, "images": [], "actions": [], "phases": [],
                  "object_xy": state.obj_xy[state.index_of(task.obj)].copy(),
                  "second_xy": second, "solved": False,
                  # Per frame: where the task's object, the second named thing and the gripper
                  # are (x, y on the table) when the frame is taken.
                  "object_xys": [], "second_xys": [], "gripper_xys": [],
                  # place_on_card: the share of the named card's pixels the frame shows.
                  "card_visible": []}
        terminated = truncated = False
        info = {}
        while not (terminated or truncated):
            action = expert.act()
            state = env.unwrapped.state
            record["images"].append(obs["image"])
            record["actions"].append(expert.intended_action.copy())
            record["phases"].append(expert.phase_name)
            record["object_xys"].append(state.obj_xy[state.index_of(task.obj)].copy())
            record["second_xys"].append(_second_xy(state, task))
            record["gripper_xys"].append(state.ee[:2].copy())
            record["card_visible"].append(
                card_visible(env, obs["image"]) if task.kind == "place_on_card" else None)
            obs, _, terminated, truncated, info = env.step(action)
        record["solved"] = bool(terminated and info.get("success"))
        out.append(record)
    return out


def _phase_rows(phases: list[str]) -> dict[str, list[int]]:
    """Frame indices per phase, then 'all phases'."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, phase in enumerate(phases):
        groups[phase].append(k)
    groups["all phases"] = list(range(len(phases)))
    return groups


def _agreement_table(bins: np.ndarray, expert_bins: np.ndarray, phases: list[str]) -> dict:
    match = bins == expert_bins
    report = {}
    for phase, rows in _phase_rows(phases).items():
        m = match[rows]
        report[phase] = {"frames": len(rows),
                         **{d: round(float(m[:, j].mean()), 3) for d, j in DIMS.items()},
                         "all": round(float(m.all(axis=1).mean()), 3)}
    return report


def _expert_bins(policy, rollouts: list[dict]) -> np.ndarray:
    return policy.action_tokenizer.encode(np.stack([a for r in rollouts for a in r["actions"]]))


def agreement(policy, rollouts: list[dict], batch_size: int) -> dict:
    """Per phase (and 'all phases'): frames and the share whose decoded bins match the expert's
    intended action's, per dim of DIMS and over all 8 dims."""
    images = [im for r in rollouts for im in r["images"]]
    instructions = [r["instruction"] for r in rollouts for _ in r["images"]]
    phases = [p for r in rollouts for p in r["phases"]]
    bins = np.concatenate([policy.predict(images[s:s + batch_size],
                                          instructions[s:s + batch_size])["bins"]
                           for s in range(0, len(images), batch_size)])
    return _agreement_table(bins, _expert_bins(policy, rollouts), phases)


def _readout_fn(policy):
    """The image tower's readouts as one jitted function of (params, pixels, tokens, mask), made
    once per policy (an unjitted apply dispatches every op and is many times slower)."""
    fn = getattr(policy, "_diagnose_readouts", None)
    if fn is None:
        import jax

        from rt2_jax import localization, train_state

        aux = bool(policy.config.model.vit.get("keypoint_action_head", False))

        def readouts(params, pixels, tokens, mask):
            _, sown = policy.model.apply({"params": params}, pixels, tokens, mask,
                                         method="encode", mutable=["intermediates"])
            logits = train_state.keypoint_action_logits(sown) if aux else None
            return localization.keypoints(sown), logits

        fn = jax.jit(readouts)
        policy._diagnose_readouts = fn
    return fn


def image_tower_readouts(policy, images, instructions) -> tuple[np.ndarray, np.ndarray | None]:
    """The image tower's keypoints [N, K, 2] (u right, v up, in [-1, 1]) for N observations, and
    the argmax bins [N, 8] of its auxiliary action readout (`model.vit.keypoint_action_head`;
    None without one)."""
    pixels, _ = policy.prepare_cameras(list(images), None)
    tokens, mask = policy.encode_prompts(list(instructions))
    kp, logits = _readout_fn(policy)(policy.params, pixels, tokens, mask)
    bins = None if logits is None else np.asarray(logits).argmax(-1)
    return np.asarray(kp, np.float64), bins


def tower_readouts(policy, rollouts: list[dict], batch_size: int):
    """image_tower_readouts on every frame of `rollouts`, in batches of `batch_size` (the last
    padded with copies of its last frame, so one compiled shape serves them all)."""
    images = [im for r in rollouts for im in r["images"]]
    instructions = [r["instruction"] for r in rollouts for _ in r["images"]]
    kps, bins = [], []
    for s in range(0, len(images), batch_size):
        chunk_images = images[s:s + batch_size]
        chunk_text = instructions[s:s + batch_size]
        n = len(chunk_images)
        pad = batch_size - n if len(images) > batch_size else 0
        kp, b = image_tower_readouts(policy, chunk_images + [chunk_images[-1]] * pad,
                                     chunk_text + [chunk_text[-1]] * pad)
        kps.append(kp[:n])
        bins.append(None if b is None else b[:n])
    return np.concatenate(kps), None if bins[0] is None else np.concatenate(bins)


def keypoint_tracking(keypoints: np.ndarray, rollouts: list[dict]) -> dict:
    """On every frame: keypoint 0's distance from the task's object, keypoint 1's from the second
    named thing, and the gripper keypoint's from the gripper (image sides; median per phase).
    The gripper keypoint is the one after keypoints 0 and 1 whose median distance from the
    gripper over all frames is least: no loss names one, so this finds which keypoint, if any,
    the policy learned to put on its own gripper (None with 2 keypoints or fewer). `keypoints`
    [N, K, 2] are the frames' keypoints in rollout order."""
    kp_xy = (keypoints + 1.0) / 2.0      # fixed camera: table coordinates * 2 - 1
    phases = [p for r in rollouts for p in r["phases"]]
    dists = {"keypoint_0": np.linalg.norm(
        kp_xy[:, 0] - np.stack([o for r in rollouts for o in r["object_xys"]]), axis=-1)}
    g = None
    if keypoints.shape[1] > 2:
        gripper = np.stack([x for r in rollouts for x in r["gripper_xys"]])
        to_gripper = np.linalg.norm(kp_xy[:, 2:] - gripper[:, None], axis=-1)   # [N, K - 2]
        best = int(np.argmin(np.median(to_gripper, axis=0)))
        g = best + 2
        dists["gripper"] = to_gripper[:, best]
    seconds = [x for r in rollouts for x in r["second_xys"]]
    if keypoints.shape[1] > 1 and all(x is not None for x in seconds):
        dists["keypoint_1"] = np.linalg.norm(kp_xy[:, 1] - np.stack(seconds), axis=-1)
    table = {}
    for phase, rows in _phase_rows(phases).items():
        table[phase] = {"frames": len(rows),
                        **{name: round(float(np.median(d[rows])), 4) for name, d in dists.items()}}
    return {"gripper_keypoint": g, "phases": table}


def first_frame_keypoints(policy, images, instructions) -> np.ndarray:
    """The image tower's keypoints [N, K, 2] (u right, v up, in [-1, 1]) for N observations."""
    return image_tower_readouts(policy, images, instructions)[0]


def keypoint_distances(policy, rollouts: list[dict],
                       first_keypoints: np.ndarray | None = None) -> dict | None:
    """Keypoint 0 from the task's object and keypoint 1 from the second named thing, on each
    rollout's first frame (image sides): median, and share within POINT_TOLERANCE. None when
    the image tower has no keypoints. `first_keypoints` [R, K, 2]: the rollouts' first-frame
    keypoints when already computed (else read from the policy)."""
    if int(policy.config.model.vit.get("keypoints", 0)) < 1:
        return None
    kp = first_keypoints
    if kp is None:
        kp = first_frame_keypoints(policy, [r["images"][0] for r in rollouts],
                                   [r["instruction"] for r in rollouts])
    # Keypoints are in [-1, 1], u right and v up: the fixed camera's table coordinates * 2 - 1.
    kp_xy = (kp + 1.0) / 2.0
    out = {}
    for k, key in ((0, "object_xy"), (1, "second_xy")):
        if k >= kp.shape[1]:
            continue
        rows = [i for i, r in enumerate(rollouts) if r[key] is not None]
        if not rows:
            continue
        d = np.array([np.linalg.norm(kp_xy[i, k] - rollouts[i][key]) for i in rows])
        out[f"keypoint_{k}"] = {"frames": len(rows), "median": round(float(np.median(d)), 4),
                                "within_tolerance": round(float((d <= vqa.POINT_TOLERANCE)
                                                                .mean()), 3)}
    return out


def diagnose(policy, *, tasks, episodes: int, seed: int = 0, concepts: str = "seen",
             batch_size: int = 64, log=print) -> dict:
    """The report (see the module docstring) for each task kind of `tasks`."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if concepts not in world.CONCEPTS:
        raise ValueError(f"concepts {concepts!r} is not one of {world.CONCEPTS}")
    unknown = [t for t in tasks if t not in world.TASK_KINDS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be some of {world.TASK_KINDS}, got {list(tasks)}")
    runnable = category_tasks(concepts, tasks)   # 'symbols' scenes: place_on_card only
    if runnable is None:
        raise ValueError(f"concepts='symbols' runs place_on_card tasks; tasks are {list(tasks)}")
    tasks = runnable
    trained = export_world(policy)
    report = {**trained, "concepts": concepts, "episodes": episodes, "tasks": {}}
    camera = trained.pop("camera")   # the expert's rollouts read the state: any camera
    for kind in tasks:
        rollouts = expert_frames(kind, episodes=episodes, seed=seed, concepts=concepts,
                                 **trained)
        entry = {"expert_solved": round(float(np.mean([r["solved"] for r in rollouts])), 3),
                 "agreement": agreement(policy, rollouts, batch_size)}
        phases = [p for r in rollouts for p in r["phases"]]
        if kind == "place_on_card":   # a world property of the expert's frames
            visible = np.array([v for r in rollouts for v in r["card_visible"]])
            entry["card_visible"] = {phase: round(float(visible[rows].mean()), 3)
                                     for phase, rows in _phase_rows(phases).items()}
        if int(policy.config.model.vit.get("keypoints", 0)) >= 1:
            kp, aux_bins = tower_readouts(policy, rollouts, batch_size)
            if camera == "fixed":
                # Each rollout's first frame is among the frames just read.
                first = np.cumsum([0] + [len(r["images"]) for r in rollouts[:-1]])
                entry["keypoints"] = keypoint_distances(policy, rollouts, kp[first])
                entry["keypoint_tracking"] = keypoint_tracking(kp, rollouts)
            if aux_bins is not None:
                # The image tower's own action readout against the expert: what its keypoints
                # and features hold, next to what the decoder makes of them.
                entry["readout_agreement"] = _agreement_table(
                    aux_bins, _expert_bins(policy, rollouts), phases)
        report["tasks"][kind] = entry
        log(f"{kind}: {sum(len(r['images']) for r in rollouts)} frames of {episodes} expert "
            f"rollouts scored")
    return report


def _table(title: str, columns: list[str], rows: dict, fmt: str) -> list[str]:
    lines = ["", title, "| phase | frames | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for phase, row in rows.items():
        lines.append(f"| {phase} | {row['frames']} | "
                     + " | ".join(format(row[c], fmt) for c in columns) + " |")
    return lines


def format_report(report: dict) -> str:
    lines = [f"grid {report['grid']}, expert move quantum {report['move_quantum']}, "
             f"concepts {report['concepts']}, {report['episodes']} expert rollouts per task"]
    for kind, entry in report["tasks"].items():
        lines += _table(f"{kind} (expert solves {entry['expert_solved']:.0%}): the decoded "
                        "action's bins against the expert's", [*DIMS, "all"],
                        entry["agreement"], ".2f")
        if entry.get("readout_agreement"):
            lines += _table("the image tower's own action readout (keypoint_action_head) "
                            "against the expert", [*DIMS, "all"], entry["readout_agreement"],
                            ".2f")
        for name, kp in (entry.get("keypoints") or {}).items():
            lines.append(f"{name}: median {kp['median']:.3f} image sides from its thing, "
                         f"{kp['within_tolerance']:.0%} within an object radius "
                         f"({kp['frames']} first frames)")
        tracking = entry.get("keypoint_tracking")
        if tracking:
            columns = [c for c in ("keypoint_0", "keypoint_1", "gripper")
                       if c in tracking["phases"]["all phases"]]
            title = ("median distance on every frame (image sides): keypoint 0 from the object, "
                     "keypoint 1 from the second named thing")
            if tracking["gripper_keypoint"] is not None:
                title += (f", keypoint {tracking['gripper_keypoint']} (of the others, the one "
                          "nearest the gripper) from the gripper")
            lines += _table(title, columns, tracking["phases"], ".3f")
        if entry.get("card_visible"):
            lines += ["", "share of the named card's pixels the frame shows: " + ", ".join(
                f"{phase} {v:.2f}" for phase, v in entry["card_visible"].items())]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    from rt2_jax import policy as policy_lib

    policy = policy_lib.Policy.from_export(f.export)
    tasks = tuple(f.tasks) or tuple(trained_world(policy, "tasks", ())) or world.TASK_KINDS
    stream = sys.stderr if f.json else sys.stdout
    try:
        report = diagnose(policy, tasks=tasks, episodes=f.episodes, seed=f.seed,
                          concepts=f.concepts, batch_size=f.batch_size,
                          log=lambda line: print(line, file=stream, flush=True))
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(json.dumps(report) if f.json else format_report(report), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
