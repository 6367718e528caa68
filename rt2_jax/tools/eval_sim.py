"""Closed-loop evaluation of an export in the toy tabletop world.

    python -m rt2_jax.tools.eval_sim --export=exports/tiny --episodes=50 --concepts=unseen [--json]

Each episode i resets `TabletopEnv(concepts=...)` with seed `--seed + i`; the policy sees the
observation's image and instruction and its action is stepped until the episode terminates (the
policy's terminate dim) or is truncated (`--max_episode_steps`). An episode succeeds when the
policy terminates it with the task solved (the env's reward). `--concepts=unseen` is RT-2's
generalization experiment in miniature: the task's object comes from concepts that training saw
only in VQA data. For reference the scripted expert runs the same seeds (same scenes and tasks).

Several episodes run side by side (`--batch_size`) so one policy call serves them all; the batch
keeps its size (finished slots repeat a live observation) so the decode loop compiles once.
Prints one progress line per finished episode and a summary; with --json the summary is one JSON
object on stdout and progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from rt2_jax import sim


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The CLI flags; defined only when the module runs as a program (or by a caller on its own
    FlagValues), so importing it never clashes with other tools' flags."""
    fv = flag_values
    flags.DEFINE_string("export", None, "Export directory (python -m rt2_jax.export).",
                        flag_values=fv)
    flags.DEFINE_integer("episodes", 50, "Number of episodes.", flag_values=fv)
    flags.DEFINE_enum("concepts", "seen", ["seen", "unseen", "all"],
                      "Objects/backgrounds: seen in robot data, held out, or any.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Episode i uses seed + i.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the summary as one JSON object on stdout.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Episodes run side by side per policy call.",
                         flag_values=fv)
    flags.DEFINE_integer("max_episode_steps", sim.MAX_EPISODE_STEPS,
                         "Truncate an episode after this many steps.", flag_values=fv)
    flags.DEFINE_float("temperature", 0.0, "0 = greedy decoding.", flag_values=fv)
    flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).", flag_values=fv)
    flags.mark_flags_as_required(["export"], flag_values=fv)


@dataclasses.dataclass
class _Slot:
    """One running episode."""

    env: sim.TabletopEnv
    index: int = -1
    seed: int = 0
    observation: dict | None = None
    steps: int = 0
    started: float = 0.0

    @property
    def active(self) -> bool:
        return self.observation is not None


def expert_episode(concepts: str, seed: int, max_episode_steps: int) -> dict:
    """The scripted expert on the scene and task of `seed`."""
    env = sim.TabletopEnv(max_episode_steps=max_episode_steps, concepts=concepts)
    episode = sim.rollout(env, sim.ScriptedExpert(env), seed=seed)
    return {"success": bool(episode.terminated and episode.success),
            "steps": len(episode.actions), "instruction": episode.task.instruction}


def _rate(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def summarize(records: list[dict]) -> dict:
    """Success rates overall and per task kind, mean lengths, from per-episode records."""
    def stats(rows):
        return {
            "num_episodes": len(rows),
            "success_rate": _rate([r["success"] for r in rows]),
            "solved_at_end_rate": _rate([r["solved_at_end"] for r in rows]),
            "terminated_rate": _rate([r["terminated"] for r in rows]),
            "mean_episode_length": _rate([r["steps"] for r in rows]),
            "expert_success_rate": _rate([r["expert_success"] for r in rows]),
            "expert_mean_episode_length": _rate([r["expert_steps"] for r in rows]),
        }

    kinds = [k for k in sim.TASK_KINDS if any(r["task"] == k for r in records)]
    return {**stats(records),
            "per_task": {k: stats([r for r in records if r["task"] == k]) for k in kinds}}


def evaluate(policy, *, episodes: int, concepts: str = "seen", seed: int = 0,
             batch_size: int = 8, max_episode_steps: int = sim.MAX_EPISODE_STEPS,
             log: Callable[[str], None] | None = print) -> dict:
    """Runs `episodes` closed-loop episodes of `policy` (anything with `act_batch(images,
    instructions) -> [B, 8]`) and the scripted expert; returns the summary with the per-episode
    records under 'episodes'."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, episodes)
    slots = [_Slot(sim.TabletopEnv(max_episode_steps=max_episode_steps, concepts=concepts))
             for _ in range(batch_size)]
    records: list[dict | None] = [None] * episodes
    next_episode = 0
    calls = steps_total = 0
    start = time.perf_counter()

    def start_next(slot: _Slot) -> None:
        nonlocal next_episode
        if next_episode >= episodes:
            slot.observation = None
            return
        slot.index, slot.seed = next_episode, seed + next_episode
        slot.observation, _ = slot.env.reset(seed=slot.seed)
        slot.steps, slot.started = 0, time.perf_counter()
        next_episode += 1

    def finish(slot: _Slot, info: dict, terminated: bool, reward: float) -> None:
        expert = expert_episode(concepts, slot.seed, max_episode_steps)
        task = info["task"]
        if expert["instruction"] != task.instruction:   # same seed must mean the same task
            raise RuntimeError(f"seed {slot.seed}: the expert got {expert['instruction']!r}, "
                               f"the policy {task.instruction!r}")
        record = {
            "episode": slot.index, "seed": slot.seed, "task": task.kind,
            "instruction": task.instruction, "success": bool(terminated and reward > 0),
            "solved_at_end": bool(info["success"]), "terminated": bool(terminated),
            "steps": slot.steps, "expert_success": expert["success"],
            "expert_steps": expert["steps"],
        }
        records[slot.index] = record
        if log is not None:
            done = sum(r is not None for r in records)
            outcome = "success" if record["success"] else (
                "failure (terminated unsolved)" if terminated else "failure (truncated)")
            log(f"[{done:>{len(str(episodes))}}/{episodes}] seed={slot.seed} {task.kind:<13} "
                f"{outcome} in {slot.steps} steps ({time.perf_counter() - slot.started:.1f}s); "
                f"expert: {'success' if expert['success'] else 'failure'} in "
                f"{expert['steps']} steps | {task.instruction!r}")

    for slot in slots:
        start_next(slot)
    while any(slot.active for slot in slots):
        live = [slot for slot in slots if slot.active]
        # A constant batch size keeps the compiled decode loop (idle slots repeat a live one).
        filled = live + [live[0]] * (batch_size - len(live))
        actions = policy.act_batch([s.observation["image"] for s in filled],
                                   [s.observation["instruction"] for s in filled])
        calls += 1
        for slot, action in zip(live, actions[:len(live)], strict=True):
            obs, reward, terminated, truncated, info = slot.env.step(np.asarray(action))
            slot.steps += 1
            steps_total += 1
            slot.observation = obs
            if terminated or truncated:
                finish(slot, info, terminated, reward)
                start_next(slot)
    wall = time.perf_counter() - start
    return {"concepts": concepts, "seed": seed, "max_episode_steps": max_episode_steps,
            **summarize(records),
            "policy_calls": calls, "env_steps": steps_total, "wall_s": round(wall, 2),
            "env_steps_per_s": round(steps_total / wall, 2) if wall > 0 else 0.0,
            "episodes": records}


def format_summary(result: dict) -> str:
    lines = [f"concepts={result['concepts']} episodes={result['num_episodes']} "
             f"seed={result['seed']}",
             f"{'task':<14}{'n':>4}{'success':>9}{'expert':>8}{'mean len':>10}"]
    rows = [*result["per_task"].items(), ("all", result)]
    for name, row in rows:
        lines.append(f"{name:<14}{row['num_episodes']:>4}{row['success_rate']:>9.2f}"
                     f"{row['expert_success_rate']:>8.2f}{row['mean_episode_length']:>10.1f}")
    lines.append(f"{result['env_steps']} env steps in {result['wall_s']}s "
                 f"({result['env_steps_per_s']} steps/s, {result['policy_calls']} policy calls)")
    return "\n".join(lines)


def run(f: flags.FlagValues) -> dict:
    """Evaluates as the parsed flags `f` say; prints progress and the summary; returns it."""
    from rt2_jax import decoding
    from rt2_jax import policy as policy_lib

    sampling = decoding.Sampling(temperature=f.temperature, top_k=f.top_k)
    policy = policy_lib.Policy.from_export(f.export, sampling=sampling, seed=f.seed)
    stream = sys.stderr if f.json else sys.stdout
    result = evaluate(policy, episodes=f.episodes, concepts=f.concepts, seed=f.seed,
                      batch_size=f.batch_size, max_episode_steps=f.max_episode_steps,
                      log=lambda line: print(line, file=stream, flush=True))
    result = {"export": f.export, **result}
    print(json.dumps(result) if f.json else format_summary(result), flush=True)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # checkpoint-loading chatter would bury the progress
    run(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)
