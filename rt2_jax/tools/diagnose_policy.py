"""Where a toy-world policy goes wrong: its action against the scripted expert's on the expert's
own frames, per task kind and expert phase, and where its keypoints point.

    python -m rt2_jax.tools.diagnose_policy --export=exports/place --episodes=30 \
        [--tasks=pick,place_on_card] [--concepts=seen] [--json]

For each task kind, `--episodes` expert rollouts (seeds `--seed + i`) in the world the export was
trained on (its scene grid, and its expert's move quantum, from the export's config). On every
frame the policy decodes an action from the frame and the instruction, as it would in closed
loop, but the expert's action is the one stepped: the policy is scored on the states a correct
episode passes through, so a phase it never learned shows up even when it fails long before it
in closed loop. Each dim's decoded bin is compared with the bin of the expert's intended action
(the clean label the training data carries). Reported per task kind and expert phase ("above",
"descend", "grasp", "lift", "carry", "lower", "release", "done", ...): frames, and the share of
frames whose terminate, dx, dy, dz and gripper bins agree, and `all` (all 8 dims).

With a fixed camera and an image tower with keypoints, on each rollout's first frame: how far
(in image sides) keypoint 0 is from the task's object and keypoint 1 from the second thing the
instruction names (the card of place_on_card, the target object of move_near): median and the
share within an object's radius (`rt2_jax.sim.vqa.POINT_TOLERANCE`, the pointing answers'
tolerance). Keypoint p is what pointing answers' point p trains (`train.locate_points`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np
from absl import app, flags, logging

from rt2_jax import sim
from rt2_jax.sim import vqa, world
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


def expert_frames(task_kind: str, *, episodes: int, seed: int, concepts: str, grid: float,
                  move_quantum: float) -> list[dict]:
    """Expert rollouts: per episode the frames, instruction, intended actions, phase names,
    and the first frame's positions of the task's object and second named thing."""
    env = sim.TabletopEnv(concepts=concepts, grid=grid)
    expert = sim.ScriptedExpert(env, move_quantum=move_quantum)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i, options={"task": task_kind})
        expert.reset(seed=seed + i)
        state, task = env.unwrapped.state, env.unwrapped.task
        second = None
        if task.kind == "place_on_card":
            second = state.card_xy[state.card_index(task.symbol)].copy()
        elif task.kind == "move_near":
            second = state.obj_xy[state.index_of(task.target)].copy()
        record = {"instruction": task.instruction, "images": [], "actions": [], "phases": [],
                  "object_xy": state.obj_xy[state.index_of(task.obj)].copy(),
                  "second_xy": second, "solved": False}
        terminated = truncated = False
        info = {}
        while not (terminated or truncated):
            action = expert.act()
            record["images"].append(obs["image"])
            record["actions"].append(expert.intended_action.copy())
            record["phases"].append(expert.phase_name)
            obs, _, terminated, truncated, info = env.step(action)
        record["solved"] = bool(terminated and info.get("success"))
        out.append(record)
    return out


def agreement(policy, rollouts: list[dict], batch_size: int) -> dict:
    """Per phase (and 'all phases'): frames and the share whose decoded bins match the expert's
    intended action's, per dim of DIMS and over all 8 dims."""
    images = [im for r in rollouts for im in r["images"]]
    instructions = [r["instruction"] for r in rollouts for _ in r["images"]]
    phases = [p for r in rollouts for p in r["phases"]]
    expert_bins = policy.action_tokenizer.encode(
        np.stack([a for r in rollouts for a in r["actions"]]))
    bins = np.concatenate([policy.predict(images[s:s + batch_size],
                                          instructions[s:s + batch_size])["bins"]
                           for s in range(0, len(images), batch_size)])
    match = bins == expert_bins
    groups: dict[str, list[int]] = defaultdict(list)
    for k, phase in enumerate(phases):
        groups[phase].append(k)
    groups["all phases"] = list(range(len(phases)))
    report = {}
    for phase, rows in groups.items():
        m = match[rows]
        report[phase] = {"frames": len(rows),
                         **{d: round(float(m[:, j].mean()), 3) for d, j in DIMS.items()},
                         "all": round(float(m.all(axis=1).mean()), 3)}
    return report


def first_frame_keypoints(policy, images, instructions) -> np.ndarray:
    """The image tower's keypoints [N, K, 2] (u right, v up, in [-1, 1]) for N observations."""
    from rt2_jax import localization

    pixels, _ = policy.prepare_cameras(list(images), None)
    tokens, mask = policy.encode_prompts(list(instructions))
    _, sown = policy.model.apply({"params": policy.params}, pixels, tokens, mask, method="encode",
                                 mutable=["intermediates"])
    return np.asarray(localization.keypoints(sown), np.float64)


def keypoint_distances(policy, rollouts: list[dict]) -> dict | None:
    """Keypoint 0 from the task's object and keypoint 1 from the second named thing, on each
    rollout's first frame (image sides): median, and share within POINT_TOLERANCE. None when
    the image tower has no keypoints."""
    if int(policy.config.model.vit.get("keypoints", 0)) < 1:
        return None
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
    grid = trained_world(policy, "grid", 0.0)
    quantum = trained_world(policy, "move_quantum", 0.0)
    camera = trained_world(policy, "camera", "fixed")
    report = {"grid": grid, "move_quantum": quantum, "camera": camera, "concepts": concepts,
              "episodes": episodes, "tasks": {}}
    for kind in tasks:
        rollouts = expert_frames(kind, episodes=episodes, seed=seed, concepts=concepts,
                                 grid=grid, move_quantum=quantum)
        entry = {"expert_solved": round(float(np.mean([r["solved"] for r in rollouts])), 3),
                 "agreement": agreement(policy, rollouts, batch_size)}
        if camera == "fixed":
            entry["keypoints"] = keypoint_distances(policy, rollouts)
        report["tasks"][kind] = entry
        log(f"{kind}: {sum(len(r['images']) for r in rollouts)} frames of {episodes} expert "
            f"rollouts scored")
    return report


def format_report(report: dict) -> str:
    lines = [f"grid {report['grid']}, expert move quantum {report['move_quantum']}, "
             f"concepts {report['concepts']}, {report['episodes']} expert rollouts per task"]
    for kind, entry in report["tasks"].items():
        lines += ["", f"{kind} (expert solves {entry['expert_solved']:.0%})",
                  "| phase | frames | " + " | ".join([*DIMS, "all"]) + " |",
                  "|---" * (len(DIMS) + 3) + "|"]
        for phase, row in entry["agreement"].items():
            lines.append(f"| {phase} | {row['frames']} | "
                         + " | ".join(f"{row[d]:.2f}" for d in [*DIMS, "all"]) + " |")
        for name, kp in (entry.get("keypoints") or {}).items():
            lines.append(f"{name}: median {kp['median']:.3f} image sides from its thing, "
                         f"{kp['within_tolerance']:.0%} within an object radius "
                         f"({kp['frames']} first frames)")
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
