"""Closed-loop evaluation in the toy tabletop world, per RT-2 category, plus held-out VQA.

    python -m rt2_jax.tools.eval_sim --export=exports/tiny --episodes=50 \
        --categories=seen,unseen_objects,unseen_backgrounds,symbols [--json]
    python -m rt2_jax.tools.eval_sim --policy=expert --episodes=100    # the same loop, as a check
    python -m rt2_jax.tools.eval_sim --policy=random --episodes=100

Categories (rt2_jax.sim.world.EVAL_CATEGORIES) follow RT-2's evaluation: `seen` (objects,
backgrounds and card symbols of the robot episodes), `unseen_objects` (the task's object was
shown only in web data), `unseen_backgrounds` (a table only web data showed) and `symbols`
(place an object on a card whose symbol only web data showed). Episode i of a category resets
`TabletopEnv(concepts=category)` with seed `--seed + i`; the policy sees the observation's image
and instruction and its action is stepped until the episode terminates (the policy's terminate
dim) or is truncated (`--max_episode_steps`). An episode succeeds when the policy terminates it
with the task solved (the env's reward). For reference the scripted expert runs the same seeds.

`--policy=export` (default) loads `--export`; `expert` is the scripted expert reading the
simulator's state and `random` draws every action token uniformly (both through the same loop).
For an export, `--vqa_questions` held-out VQA questions (scenes no training split contains, every
question type including pointing) are answered by free-text decoding; `vqa_accuracy` is the
fraction correct (exact match of an acceptable answer; a point within POINT_TOLERANCE).

Several episodes run side by side (`--batch_size`) so one policy call serves them all; the batch
keeps its size (finished slots repeat a live observation) so the decode loop compiles once.
Prints one progress line per finished episode and a summary; with --json the summary is one JSON
object on stdout (`success`: category -> rate, `episodes`, `vqa_accuracy`) and progress goes to
stderr.

(Over 400 lines: a command-line tool; the policies, the batched episode loop, VQA scoring and
the report are only used here and by the co-fine-tuning experiment.)
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
from rt2_jax.sim import vqa, world

POLICIES = ("export", "expert", "random")
VQA_SEED_OFFSET = 1_000_003   # held-out VQA scenes come from their own seed stream


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The CLI flags; defined only when the module runs as a program (or by a caller on its own
    FlagValues), so importing it never clashes with other tools' flags."""
    fv = flag_values
    flags.DEFINE_enum("policy", "export", list(POLICIES),
                      "export: the model in --export; expert / random: reference policies.",
                      flag_values=fv)
    flags.DEFINE_string("export", None, "Export directory (python -m rt2_jax.export).",
                        flag_values=fv)
    flags.DEFINE_integer("episodes", 50, "Episodes per category.", flag_values=fv)
    flags.DEFINE_list("categories", ["seen"],
                      f"Comma-separated categories of {world.EVAL_CATEGORIES} (or 'all').",
                      flag_values=fv)
    flags.DEFINE_integer("vqa_questions", 200,
                         "Held-out VQA questions to answer (export policy only; 0 = skip).",
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Episode i uses seed + i.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the summary as one JSON object on stdout.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Episodes run side by side per policy call.",
                         flag_values=fv)
    flags.DEFINE_integer("max_episode_steps", sim.MAX_EPISODE_STEPS,
                         "Truncate an episode after this many steps.", flag_values=fv)
    flags.DEFINE_float("temperature", 0.0, "0 = greedy decoding.", flag_values=fv)
    flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).", flag_values=fv)
    flags.DEFINE_float("terminate_threshold", 0.5, "Say 'done' when p(terminate) at action "
                       "position 0 is at least this (0.5 = argmax; lower stops more readily).",
                       flag_values=fv)
    flags.DEFINE_string("dataset", None, "Robot dataset whose action bounds un-normalize the "
                        "actions (for an export trained on several).", flag_values=fv)
    flags.DEFINE_string("gif", "", "Write the first --gif_episodes episodes of the first "
                        "category as an animated GIF here.", flag_values=fv)
    flags.DEFINE_integer("gif_episodes", 4, "Episodes in the GIF.", flag_values=fv)
    flags.DEFINE_enum("camera", "", ["", *sim.CAMERAS],
                      "The robot camera the policy sees (sim.TabletopEnv). Default: the one the "
                      "export was trained with (config.data.toy_world.camera), else fixed.",
                      flag_values=fv)
    flags.DEFINE_float("grid", -1.0, "Robot scenes on multiples of this (sim.TabletopEnv; 0 = "
                       "anywhere). Default (-1): the grid the export was trained on "
                       "(config.data.toy_world.grid), else 0.", flag_values=fv)
    flags.DEFINE_float("card_half", -1.0, "Half a card's side in the scenes (sim.TabletopEnv). "
                       "Default (-1): the size the export was trained on "
                       "(config.data.toy_world.card_half), else the world's default.",
                       flag_values=fv)
    flags.DEFINE_list("tasks", [], "Task kinds of the episodes, cycled by episode (some of "
                      f"{','.join(world.TASK_KINDS)}). Default: the kinds the export was trained "
                      "on (config.data.toy_world.tasks), else each episode draws one.",
                      flag_values=fv)


# ---------------------------------------------------------------- reference policies


class ExpertPolicy:
    """The scripted expert behind the evaluator's policy interface. It reads each episode's
    simulator state (`reset_episode` hands it the env), so it is a check of the loop and the
    world (it must solve >= 99%), not a learned policy."""

    needs_env = True

    def __init__(self):
        self._experts: dict[int, sim.ScriptedExpert] = {}

    def reset_episode(self, env: sim.TabletopEnv, seed: int) -> None:
        expert = sim.ScriptedExpert(env)
        expert.reset(seed=seed)
        self._experts[id(env)] = expert

    def act_envs(self, envs) -> np.ndarray:
        return np.stack([self._experts[id(env)].act() for env in envs])


class RandomPolicy:
    """Every action token drawn uniformly: terminate 0/1, each other dim one of the 256 bins of
    the world's action range, decoded by the action tokenizer (the output a constrained decoder
    of an untrained model could give)."""

    def __init__(self, seed: int = 0):
        from rt2_jax import actions, tokenizer

        self._rng = np.random.default_rng(seed)
        bounds = actions.ActionBounds(tuple(world.ACTION_LOW[1:]), tuple(world.ACTION_HIGH[1:]))
        self._actions = actions.ActionTokenizer(bounds, tokenizer.Tokenizer())
        self._high = [2] + [actions.NUM_BINS] * 7   # exclusive upper bound of each dim's bin

    def act_batch(self, images, instructions) -> np.ndarray:
        del images
        n = len(instructions)
        high = self._high
        return self._actions.decode(self._rng.integers(0, high, size=(n, 8)))


@dataclasses.dataclass
class _Slot:
    """One running episode."""

    env: sim.TabletopEnv
    index: int = -1
    seed: int = 0
    observation: dict | None = None
    steps: int = 0
    started: float = 0.0
    frames: list | None = None   # (camera image, whole table, action) per step, if recorded
    task: str | None = None      # the task kind asked for (None: the seed's draw)
    grasped: str = "none"        # the first object the gripper held: "named", "other" or "none"

    @property
    def active(self) -> bool:
        return self.observation is not None


def expert_episode(concepts: str, seed: int, max_episode_steps: int, grid: float = 0.0,
                   task: str | None = None, card_half: float = world.CARD_HALF) -> dict:
    """The scripted expert on the scene and task of `seed` (and task kind `task`, if given; it
    reads the state: any camera)."""
    env = sim.TabletopEnv(max_episode_steps=max_episode_steps, concepts=concepts, grid=grid,
                          card_half=card_half)
    episode = sim.rollout(env, sim.ScriptedExpert(env), seed=seed, task=task)
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
            # How episodes go wrong: the first object grasped was the named one or another,
            # and "done" said before any grasp.
            "grasped_named_rate": _rate([r["first_grasp"] == "named" for r in rows]),
            "grasped_other_rate": _rate([r["first_grasp"] == "other" for r in rows]),
            "done_before_grasp_rate": _rate([r["terminated"] and r["first_grasp"] == "none"
                                             for r in rows]),
        }

    kinds = [k for k in sim.TASK_KINDS if any(r["task"] == k for r in records)]
    return {**stats(records),
            "per_task": {k: stats([r for r in records if r["task"] == k]) for k in kinds}}


def evaluate(policy, *, episodes: int, concepts: str = "seen", seed: int = 0,
             batch_size: int = 8, max_episode_steps: int = sim.MAX_EPISODE_STEPS,
             log: Callable[[str], None] | None = print, record_frames: int = 0,
             camera: str = "fixed", grid: float = 0.0, tasks=(),
             card_half: float = world.CARD_HALF) -> dict:
    """Runs `episodes` closed-loop episodes of `policy` in one category and the scripted expert
    on the same seeds; returns the summary with the per-episode records under 'episodes'.

    `policy` has `act_batch(images, instructions) -> [B, 8]`, or (`needs_env = True`)
    `reset_episode(env, seed)` and `act_envs(envs) -> [B, 8]`. With `record_frames` = n the
    first n episodes keep their frames and decoded actions (record['frames'], ['actions']) and
    the whole table at each step (record['table_frames']). `camera`: sim.CAMERAS; `grid`: scenes on
    multiples of it (sim.TabletopEnv; the grid the policy was trained on). `tasks`: task kinds
    cycled by episode (empty: each episode's seed draws one). `card_half`: the cards' size
    (sim.TabletopEnv; the size the policy was trained on)."""
    runnable = category_tasks(concepts, tasks)
    if runnable is None:
        raise ValueError(f"the 'symbols' category's tasks are place_on_card (they name a "
                         f"held-out card symbol); the task kinds {list(tasks)} have none")
    tasks = runnable
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, episodes)
    uses_env = getattr(policy, "needs_env", False)
    slots = [_Slot(sim.TabletopEnv(max_episode_steps=max_episode_steps, concepts=concepts,
                                   camera=camera, grid=grid, card_half=card_half))
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
        slot.task = tasks[slot.index % len(tasks)] if tasks else None
        options = {"task": slot.task} if slot.task else None
        slot.observation, _ = slot.env.reset(seed=slot.seed, options=options)
        slot.steps, slot.started = 0, time.perf_counter()
        slot.frames = [] if slot.index < record_frames else None
        slot.grasped = "none"
        if uses_env:
            policy.reset_episode(slot.env, slot.seed)
        next_episode += 1

    def finish(slot: _Slot, info: dict, terminated: bool, reward: float) -> None:
        expert = expert_episode(concepts, slot.seed, max_episode_steps, grid, slot.task,
                                card_half)
        task = info["task"]
        if expert["instruction"] != task.instruction:   # same seed must mean the same task
            raise RuntimeError(f"seed {slot.seed}: the expert got {expert['instruction']!r}, "
                               f"the policy {task.instruction!r}")
        record = {
            "episode": slot.index, "seed": slot.seed, "task": task.kind,
            "instruction": task.instruction, "success": bool(terminated and reward > 0),
            "solved_at_end": bool(info["success"]), "terminated": bool(terminated),
            "steps": slot.steps, "expert_success": expert["success"],
            "expert_steps": expert["steps"], "first_grasp": slot.grasped,
        }
        if slot.frames is not None:
            record["frames"], record["table_frames"], record["actions"] = (
                list(column) for column in zip(*slot.frames, strict=True))
        records[slot.index] = record
        if log is not None:
            done = sum(r is not None for r in records)
            outcome = "success" if record["success"] else (
                "failure (terminated unsolved)" if terminated else "failure (truncated)")
            log(f"[{concepts} {done:>{len(str(episodes))}}/{episodes}] seed={slot.seed} "
                f"{task.kind:<13} {outcome} in {slot.steps} steps "
                f"({time.perf_counter() - slot.started:.1f}s); expert: "
                f"{'success' if expert['success'] else 'failure'} in {expert['steps']} steps | "
                f"{task.instruction!r}")

    for slot in slots:
        start_next(slot)
    while any(slot.active for slot in slots):
        live = [slot for slot in slots if slot.active]
        if uses_env:
            actions = policy.act_envs([s.env for s in live])
        else:
            # A constant batch size keeps the compiled decode loop (idle slots repeat a live one).
            filled = live + [live[0]] * (batch_size - len(live))
            actions = policy.act_batch([s.observation["image"] for s in filled],
                                       [s.observation["instruction"] for s in filled])
        calls += 1
        for slot, action in zip(live, actions[:len(live)], strict=True):
            if slot.frames is not None:
                slot.frames.append((slot.observation["image"], slot.env.render_table(),
                                    np.asarray(action)))
            obs, reward, terminated, truncated, info = slot.env.step(np.asarray(action))
            slot.steps += 1
            steps_total += 1
            slot.observation = obs
            state = slot.env.unwrapped.state
            if slot.grasped == "none" and state.held >= 0:
                named = state.index_of(slot.env.unwrapped.task.obj)
                slot.grasped = "named" if state.held == named else "other"
            if terminated or truncated:
                finish(slot, info, terminated, reward)
                start_next(slot)
    wall = time.perf_counter() - start
    return {"concepts": concepts, "seed": seed, "max_episode_steps": max_episode_steps,
            **summarize(records),
            "policy_calls": calls, "env_steps": steps_total, "wall_s": round(wall, 2),
            "env_steps_per_s": round(steps_total / wall, 2) if wall > 0 else 0.0,
            "episodes": records}


# ---------------------------------------------------------------- held-out VQA


def heldout_vqa(num_questions: int, seed: int = 0,
                card_half: float = world.CARD_HALF) -> list[tuple[np.ndarray, vqa.QA]]:
    """(image, question) pairs from scenes of a seed stream no training split uses: the regular
    question types and pointing questions, about held-out concepts as often as the web data
    (cards of half side `card_half`, as the policy's web data had them)."""
    out: list[tuple[np.ndarray, vqa.QA]] = []
    scene = 0
    while len(out) < num_questions:
        rng = np.random.default_rng([VQA_SEED_OFFSET, seed, scene])
        state = vqa.sample_vqa_scene(rng, card_half=card_half)
        image = sim.render.render(state)
        qas = vqa.sample_questions(state, rng, 2) + vqa.locate_questions(state, rng, 1)
        out += [(image, qa) for qa in qas]
        scene += 1
    return out[:num_questions]


def score_answer(text: str, qa: vqa.QA) -> bool:
    """Exact match of an acceptable answer; a pointing answer is right within POINT_TOLERANCE."""
    if qa.question_type in vqa.LOCATE_TYPES:
        return vqa.location_correct(text, qa.answers[0])
    return text.strip() in qa.answers


def evaluate_vqa(policy, num_questions: int, *, seed: int = 0, batch_size: int = 32,
                 card_half: float = world.CARD_HALF) -> dict:
    """Answers `num_questions` held-out questions with `policy.answer`; accuracy overall and
    per question type."""
    pairs = heldout_vqa(num_questions, seed, card_half)
    correct: dict[str, list[bool]] = {}
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        texts = policy.answer([image for image, _ in chunk], [qa.question for _, qa in chunk])
        for text, (_, qa) in zip(texts, chunk, strict=True):
            correct.setdefault(qa.question_type, []).append(score_answer(text, qa))
    every = [c for values in correct.values() for c in values]
    return {"vqa_accuracy": _rate(every), "num_questions": len(every),
            "per_type": {k: _rate(v) for k, v in sorted(correct.items())}}


# ---------------------------------------------------------------- all categories


def check_tasks(tasks) -> tuple[str, ...]:
    """`tasks` as a tuple of task kinds, each one of world.TASK_KINDS."""
    tasks = tuple(str(t).strip() for t in (tasks or ()) if str(t).strip())
    bad = [t for t in tasks if t not in world.TASK_KINDS]
    if bad:
        raise ValueError(f"unknown task kinds {bad}; use some of {world.TASK_KINDS}")
    return tasks


def category_tasks(category: str, tasks) -> tuple[str, ...] | None:
    """The task kinds `category` runs out of `tasks` (checked; () = each seed draws), or None
    when it can run none of them: 'symbols' tasks are place_on_card only."""
    tasks = check_tasks(tasks)
    if category != "symbols" or not tasks:
        return tasks
    return ("place_on_card",) if "place_on_card" in tasks else None


def parse_categories(names) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(world.EVAL_CATEGORIES)
    bad = [n for n in names if n not in world.EVAL_CATEGORIES]
    if bad or not names:
        raise ValueError(f"unknown categories {bad}; use some of {world.EVAL_CATEGORIES} or 'all'")
    return names


def evaluate_all(policy, *, categories=world.EVAL_CATEGORIES, episodes: int, seed: int = 0,
                 batch_size: int = 8, max_episode_steps: int = sim.MAX_EPISODE_STEPS,
                 vqa_questions: int = 0, log: Callable[[str], None] | None = print,
                 record_frames: int = 0, camera: str = "fixed", grid: float = 0.0,
                 tasks=(), card_half: float = world.CARD_HALF) -> dict:
    """`evaluate` for every category, then held-out VQA (when `policy` can answer and
    `vqa_questions` > 0). Returns {'success': category -> rate, 'expert_success', 'categories'
    (full summaries), 'episodes' (records with their 'category'), 'vqa_accuracy', 'vqa',
    'skipped' (category -> why)}. `tasks` (task kinds, cycled) limit every category; 'symbols'
    (place_on_card tasks) is skipped, its success None, when they have no place_on_card."""
    results, episodes_out, skipped = {}, [], {}
    for k, category in enumerate(categories):
        if category_tasks(category, tasks) is None:
            skipped[category] = (f"no place_on_card among the task kinds {list(tasks)}: the "
                                 "category's tasks name a held-out card symbol")
            if log is not None:
                log(f"[{category}] skipped: {skipped[category]}")
            continue
        result = evaluate(policy, episodes=episodes, concepts=category, seed=seed,
                          batch_size=batch_size, max_episode_steps=max_episode_steps, log=log,
                          record_frames=record_frames if k == 0 else 0, camera=camera,
                          grid=grid, tasks=tasks, card_half=card_half)
        episodes_out += [{"category": category, **r} for r in result.pop("episodes")]
        results[category] = result
    vqa_result = None
    if vqa_questions > 0 and hasattr(policy, "answer"):
        vqa_result = evaluate_vqa(policy, vqa_questions, seed=seed, card_half=card_half)
    return {"success": {c: results[c]["success_rate"] if c in results else None
                        for c in categories},
            "expert_success": {c: r["expert_success_rate"] for c, r in results.items()},
            "categories": results, "skipped": skipped, "episodes": episodes_out,
            "vqa_accuracy": vqa_result["vqa_accuracy"] if vqa_result else None,
            "vqa": vqa_result}


def format_summary(result: dict) -> str:
    lines = []
    for category, row in result["categories"].items():
        lines.append(f"{category}: episodes={row['num_episodes']} seed={row['seed']}")
        lines.append(f"  {'task':<14}{'n':>4}{'success':>9}{'expert':>8}{'mean len':>10}"
                     f"{'grasped named':>15}{'other':>7}{'done before grasp':>19}")
        for name, task_row in [*row["per_task"].items(), ("all", row)]:
            lines.append(f"  {name:<14}{task_row['num_episodes']:>4}"
                         f"{task_row['success_rate']:>9.2f}"
                         f"{task_row['expert_success_rate']:>8.2f}"
                         f"{task_row['mean_episode_length']:>10.1f}"
                         f"{task_row['grasped_named_rate']:>15.2f}"
                         f"{task_row['grasped_other_rate']:>7.2f}"
                         f"{task_row['done_before_grasp_rate']:>19.2f}")
    for category, why in result.get("skipped", {}).items():
        lines.append(f"{category}: skipped ({why})")
    lines.append("success: " + ", ".join(f"{c} {v:.2f}" for c, v in result["success"].items()
                                         if v is not None))
    if result.get("vqa"):
        per_type = ", ".join(f"{k} {v:.2f}" for k, v in result["vqa"]["per_type"].items())
        lines.append(f"held-out VQA accuracy {result['vqa_accuracy']:.3f} over "
                     f"{result['vqa']['num_questions']} questions ({per_type})")
    return "\n".join(lines)


def write_gif(path: str, records: list[dict], fps: int = 4) -> int:
    """Writes the recorded episodes (records with 'frames') as one animated GIF, each frame
    captioned with the instruction and the decoded action; returns the number of frames."""
    from rt2_jax.tools import gif as gif_lib

    return gif_lib.write_episodes_gif(path, [r for r in records if "frames" in r], fps=fps)


def make_policy(f: flags.FlagValues):
    if f.policy == "expert":
        return ExpertPolicy()
    if f.policy == "random":
        return RandomPolicy(seed=f.seed)
    if not f.export:
        raise app.UsageError("--policy=export needs --export=DIR (python -m rt2_jax.export)")
    from rt2_jax import decoding
    from rt2_jax import policy as policy_lib

    try:
        sampling = decoding.Sampling(temperature=f.temperature, top_k=f.top_k,
                                     terminate_threshold=f.terminate_threshold)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return policy_lib.Policy.from_export(f.export, dataset=f.dataset, sampling=sampling,
                                         seed=f.seed)


def trained_world(policy, key: str, default):
    """config.data.toy_world[key] of the export `policy` was loaded from, else `default`."""
    config = getattr(policy, "config", None)
    try:
        return type(default)(config.data.toy_world[key])
    except (AttributeError, KeyError, TypeError):
        return default


def camera_for(f: flags.FlagValues, policy) -> str:
    """--camera, else the camera of the export's training data, else the default."""
    return f.camera or trained_world(policy, "camera", "fixed")


def grid_for(f: flags.FlagValues, policy) -> float:
    """--grid when given (>= 0), else the grid of the export's robot scenes, else 0 (anywhere).
    A policy trained on gridded scenes and tested off the grid meets positions it never saw."""
    if f.grid >= 0:
        return float(f.grid)
    return trained_world(policy, "grid", 0.0)


def card_half_for(f: flags.FlagValues, policy) -> float:
    """--card_half when given (> 0), else the card size of the export's training scenes, else
    the default (world.CARD_HALF)."""
    if f.card_half > 0:
        return world.check_card_half(f.card_half)
    return trained_world(policy, "card_half", world.CARD_HALF)


def tasks_for(f: flags.FlagValues, policy) -> tuple[str, ...]:
    """--tasks when given, else the task kinds of the export's robot episodes, else () (each
    episode draws one). A policy trained on one kind would fail the others by construction."""
    if f.tasks:
        return check_tasks(f.tasks)
    return check_tasks(trained_world(policy, "tasks", ()))


def run(f: flags.FlagValues) -> dict:
    """Evaluates as the parsed flags `f` say; prints progress and the summary; returns it."""
    categories = parse_categories(f.categories)
    policy = make_policy(f)
    camera, grid = camera_for(f, policy), grid_for(f, policy)
    try:
        tasks = tasks_for(f, policy)
        card_half = card_half_for(f, policy)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    stream = sys.stderr if f.json else sys.stdout
    result = evaluate_all(policy, categories=categories, episodes=f.episodes, seed=f.seed,
                          batch_size=f.batch_size, max_episode_steps=f.max_episode_steps,
                          vqa_questions=f.vqa_questions if f.policy == "export" else 0,
                          log=lambda line: print(line, file=stream, flush=True),
                          record_frames=f.gif_episodes if f.gif else 0, camera=camera,
                          grid=grid, tasks=tasks, card_half=card_half)
    if f.gif:
        frames = write_gif(f.gif, result["episodes"])
        print(f"wrote {f.gif} ({frames} frames)", file=stream, flush=True)
        for record in result["episodes"]:
            record.pop("frames", None)
            record.pop("table_frames", None)
            actions = record.pop("actions", None)
            if actions is not None:
                record["decoded_actions"] = [np.asarray(a).round(4).tolist() for a in actions]
    result = {"policy": f.policy, "export": f.export, "camera": camera, "grid": grid,
              "card_half": card_half, "tasks": list(tasks), **result}
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
