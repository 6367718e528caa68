"""RT-2's co-fine-tuning ablation in miniature, on the toy world.

    python -m rt2_jax.experiments.cofinetune --workdir=runs/cofinetune [--seeds=0,1,2]

(0) Web pretraining: the VLM trains on the toy world's web data only (VQA with pointing answers,
captions), which shows the held-out objects, tables and card symbols that robot episodes never
do. Then, for the same number of steps and each seed, three arms:
  (a) robot_only   — fine-tune the pretrained model on robot episodes only;
  (b) cofinetune   — fine-tune it on robot episodes mixed with the web data
                     (--robot_fraction of each batch, RT-2-PaLI-X used about half);
  (c) scratch      — train on robot episodes only from random weights.
Each arm is exported and evaluated in closed loop per category (seen, unseen objects, unseen
backgrounds, symbols; `rt2_jax.tools.eval_sim`) and on held-out VQA. The table (mean and spread
over seeds) is printed and written to {workdir}/results.{json,md,png}. Every stage keeps its own
workdir and export, so rerunning the command resumes where it stopped. With --jobs=N the
fine-tuning stages (after the pretraining they share) run N at a time, each in its own process
with its output in {workdir}/{arm}_seed{seed}.log; on a 2-core machine two at a time finish the
stages in about five sixths of the time one after the other takes.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import re
import sys
import time

import numpy as np
from absl import app, flags

from rt2_jax.sim import world
from rt2_jax.sim.env import MAX_EPISODE_STEPS

ARMS = ("robot_only", "cofinetune", "scratch")
COLUMNS = ("seen", "unseen_objects", "unseen_backgrounds", "symbols", "vqa_accuracy")


def define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/tiny.py", "Base experiment config.")
    flags.DEFINE_string("workdir", None, "Directory for every stage's run and the results.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (each arm runs once per seed).")
    flags.DEFINE_list("arms", list(ARMS), f"The arms to run (some of {','.join(ARMS)}).")
    flags.DEFINE_integer("pretrain_steps", 2000, "Web-only pretraining steps.")
    flags.DEFINE_integer("finetune_steps", 2000, "Steps of each arm.")
    flags.DEFINE_float("robot_fraction", 0.5, "Robot share of co-fine-tuning batches.")
    flags.DEFINE_integer("episodes", 50, "Closed-loop episodes per category and run.")
    flags.DEFINE_integer("vqa_questions", 300, "Held-out VQA questions per run.")
    flags.DEFINE_integer("max_episode_steps", MAX_EPISODE_STEPS,
                         "Step limit of a closed-loop episode.")
    flags.DEFINE_integer("jobs", 1, "Fine-tuning stages run at a time, each in its own process "
                         "(the pretraining runs first, alone).")
    flags.DEFINE_integer("evals_per_stage", 2, "Held-out evaluations (train.py's per-dim action "
                         "accuracy, VQA, pointing) spread evenly over each stage; 0 = none.")
    flags.mark_flags_as_required(["workdir"])


def stage_config(base, arm: str, seed: int, steps: int, robot_fraction: float = 0.5,
                 init_from: str = "", evals: int = 2):
    """The config of one stage: 'pretrain' (web only) or an arm of ARMS. `evals` held-out
    evaluations are spread evenly over its steps (the last at the end; 0 = none)."""
    c = base.copy_and_resolve_references()
    c.seed = seed
    sources = c.data.sources
    web = [name for name, s in sources.items() if s.kind != "robot"]
    robots = [name for name, s in sources.items() if s.kind == "robot"]
    if not web or not robots:
        raise ValueError(f"the experiment needs robot and web sources; the config has robot "
                         f"{robots} and web {web}")
    if arm == "pretrain":
        robot_weight = 0.0        # kept (weight 0) so the action bounds match the later arms
    elif arm == "cofinetune":
        robot_weight = robot_fraction
    elif arm in ("robot_only", "scratch"):
        robot_weight = 1.0
    else:
        raise ValueError(f"unknown stage {arm!r}; use 'pretrain' or one of {ARMS}")
    for name in robots:
        sources[name].weight = robot_weight / len(robots)
    for name in web:
        sources[name].weight = (1.0 - robot_weight) / len(web)
    c.train.num_steps = steps
    c.train.init_from = init_from if arm in ("robot_only", "cofinetune") else ""
    c.train.export_at_end = True
    c.train.export_dtype = "float32"
    # Held-out per-dim action accuracy, VQA exact match and pointing distance during training:
    # the learning curves that explain a closed-loop result (collected by `curves`).
    if evals < 0:
        raise ValueError(f"evals per stage must be >= 0, got {evals}")
    c.train.eval_every = max(steps // evals, 1) if evals else 0
    c.train.checkpoint_every = max(steps // 2, 1)
    return c


def run_stage(config, workdir: str, log) -> str:
    """Trains (or resumes) one stage; returns its export directory."""
    from rt2_jax import train

    export = os.path.join(workdir, "export")
    if os.path.isdir(os.path.join(export, "params")):
        log(f"{workdir}: export exists, skipping training")
        return export
    start = time.perf_counter()
    train.train(config, workdir)
    log(f"{workdir}: trained {config.train.num_steps} steps in "
        f"{time.perf_counter() - start:.0f}s")
    return export


def _kept_result(path: str, settings: dict) -> dict | None:
    """The result `_kept` wrote to `path` if it was computed with these settings, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        kept = json.load(f)
    return kept["result"] if kept.get("settings") == settings else None


def _kept(path: str, settings: dict, compute) -> dict:
    """`compute()`'s result, kept in `path` (JSON with its settings) and read back instead of
    computed again when a rerun asks with the same settings."""
    kept = _kept_result(path, settings)
    if kept is not None:
        return kept
    result = compute()
    with open(path + ".tmp", "w") as f:
        json.dump({"settings": settings, "result": result}, f, indent=2)
    os.replace(path + ".tmp", path)
    return result


def eval_settings(episodes: int, vqa_questions: int, seed: int, max_episode_steps: int) -> dict:
    """What an arm's kept closed-loop result (eval.json) was computed with."""
    return {"episodes": episodes, "vqa_questions": vqa_questions, "seed": seed,
            "max_episode_steps": max_episode_steps}


def evaluate_export(export: str, episodes: int, vqa_questions: int, seed: int,
                    max_episode_steps: int = MAX_EPISODE_STEPS) -> dict:
    """Closed loop in every category on the world the export was trained on (its camera, scene
    grid and card size), and held-out VQA. The result is kept next to the export (eval.json) and
    read back by a rerun with the same settings, so resuming does not evaluate finished arms
    again."""
    settings = eval_settings(episodes, vqa_questions, seed, max_episode_steps)

    def compute() -> dict:
        from rt2_jax import policy as policy_lib
        from rt2_jax.tools import eval_sim

        policy = policy_lib.Policy.from_export(export)
        result = eval_sim.evaluate_all(policy, episodes=episodes, seed=10_000 * (seed + 1),
                                       batch_size=16, vqa_questions=vqa_questions, log=None,
                                       max_episode_steps=max_episode_steps,
                                       camera=eval_sim.trained_world(policy, "camera", "fixed"),
                                       grid=eval_sim.trained_world(policy, "grid", 0.0),
                                       tasks=eval_sim.trained_world(policy, "tasks", ()),
                                       card_half=eval_sim.trained_world(
                                           policy, "card_half", world.CARD_HALF))
        return {**result["success"], "vqa_accuracy": result["vqa_accuracy"],
                "vqa_per_type": result["vqa"]["per_type"] if result["vqa"] else None,
                "expert_success": result["expert_success"],
                "solved_at_end": {c: r["solved_at_end_rate"]
                                  for c, r in result["categories"].items()}}

    return _kept(os.path.join(os.path.dirname(export.rstrip("/")), "eval.json"), settings,
                 compute)


def evaluate_pretrained_vqa(export: str, vqa_questions: int) -> dict:
    """Held-out VQA of the web-pretrained export, kept next to it like an arm's evaluation."""
    def compute() -> dict:
        from rt2_jax import policy as policy_lib
        from rt2_jax.tools import eval_sim

        policy = policy_lib.Policy.from_export(export)
        return eval_sim.evaluate_vqa(policy, vqa_questions, seed=0,
                                     card_half=eval_sim.trained_world(policy, "card_half",
                                                                      world.CARD_HALF))

    return _kept(os.path.join(os.path.dirname(export.rstrip("/")), "vqa_eval.json"),
                 {"vqa_questions": vqa_questions, "seed": 0}, compute)


def _stage_done(stage_dir: str, settings: dict) -> bool:
    """Whether a stage has its export and a kept closed-loop result for these settings."""
    return (os.path.isdir(os.path.join(stage_dir, "export", "params"))
            and _kept_result(os.path.join(stage_dir, "eval.json"), settings) is not None)


def _stage_worker(config, stage_dir: str, eval_args: tuple, log_path: str) -> float:
    """One fine-tuning stage in a worker process: train (or resume), export and evaluate, with
    this process's output appended to `log_path`. Returns the seconds it took."""
    start = time.perf_counter()
    with open(log_path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    export = run_stage(config, stage_dir, print)
    evaluate_export(export, *eval_args)
    return time.perf_counter() - start


_STEP_LINE = re.compile(rb"^step (\d+)/(\d+) ", re.M)


def last_step(log_path: str, tail_bytes: int = 65536) -> str | None:
    """The latest "step i/N" a stage's training printed to its log (None before the first)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(os.path.getsize(log_path) - tail_bytes, 0))
            found = _STEP_LINE.findall(f.read())
    except OSError:
        return None
    return f"{int(found[-1][0])}/{int(found[-1][1])}" if found else None


def run_stages_in_parallel(stages: list[tuple], jobs: int, log,
                           progress_every_s: float = 300.0) -> None:
    """Trains and evaluates `stages` ((name, config, stage_dir, eval_args) each) `jobs` at a
    time in fresh processes (spawned: JAX does not survive a fork), logging every
    `progress_every_s` the step each running stage has reached. Every stage runs to its end
    even when another fails; then a RuntimeError names the failed ones and their logs."""
    failed = []
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                                max_tasks_per_child=1) as pool:
        futures = {}
        for name, config, stage_dir, eval_args in stages:
            log_path = stage_dir + ".log"
            futures[pool.submit(_stage_worker, config, stage_dir, eval_args, log_path)] = (
                name, log_path)
            log(f"{name}: queued for a worker process (output in {log_path})")
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=progress_every_s,
                return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                name, log_path = futures[future]
                try:
                    log(f"{name}: trained and evaluated in {future.result():.0f}s")
                except Exception as e:  # reported below, with the stage's log
                    failed.append(f"{name} ({type(e).__name__}: {e}; log: {log_path})")
                    log(f"{name}: FAILED ({type(e).__name__}: {e}); see {log_path}")
            steps = {futures[f][0]: last_step(futures[f][1]) for f in pending if f.running()}
            running = [f"{name} at step {step}" for name, step in steps.items() if step]
            if not done and running:
                log("running: " + ", ".join(sorted(running)))
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(stages)} stages failed: " + "; ".join(failed))


def curves(workdir: str) -> list[dict]:
    """The held-out evaluations (eval/* of metrics.jsonl) a stage logged, by step."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:   # a line cut off by a crash
                continue
            evals = {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
            if evals:
                rows.append({"step": record["step"], **evals})
    return rows


def summarize(runs: dict) -> dict:
    """runs[arm][seed] -> per column {mean, std, min, max} over seeds."""
    table = {}
    for arm, by_seed in runs.items():
        table[arm] = {}
        for column in COLUMNS:
            values = np.array([r[column] for r in by_seed.values() if r.get(column) is not None])
            if values.size:
                table[arm][column] = {"mean": float(values.mean()), "std": float(values.std()),
                                      "min": float(values.min()), "max": float(values.max()),
                                      "n": int(values.size)}
    return table


CURVE_COLUMNS = ("action_acc/terminate", "action_acc/dx", "action_acc/dy", "action_acc/dz",
                 "action_acc/gripper", "vqa_exact_match", "locate_dist")


def markdown(table: dict, pretrain_vqa: float | None, learning: dict | None = None) -> str:
    lines = ["| arm | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for arm, row in table.items():
        cells = [f"{row[c]['mean']:.2f} ± {row[c]['std']:.2f}" if c in row else "–"
                 for c in COLUMNS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if pretrain_vqa is not None:
        lines.append(f"\nWeb-pretrained model (before robot data): held-out VQA accuracy "
                     f"{pretrain_vqa:.3f}.")
    if learning:
        lines += ["", "Held-out evaluations during training (train.py's eval: per-dim action "
                  "accuracy, VQA exact match, pointing distance in image sides):", "",
                  "| stage | step | " + " | ".join(CURVE_COLUMNS) + " |",
                  "|---" * (len(CURVE_COLUMNS) + 2) + "|"]
        for stage, rows in learning.items():
            for row in rows:
                cells = [f"{row[c]:.3f}" if c in row else "–" for c in CURVE_COLUMNS]
                lines.append(f"| {stage} | {row['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(COLUMNS))
    for k, (arm, row) in enumerate(table.items()):
        # A column an arm has no value for (a category not run) draws no bar, not a zero.
        means = [row.get(c, {}).get("mean", np.nan) for c in COLUMNS]
        stds = [row.get(c, {}).get("std", np.nan) for c in COLUMNS]
        ax.bar(x + k * width, means, width, yerr=stds, capsize=3, label=arm)
    ax.set_xticks(x + width * (len(table) - 1) / 2, [c.replace("_", "\n") for c in COLUMNS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate / accuracy")
    ax.set_title("Toy-world RT-2 ablation: mean over seeds (bars: std)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(base, workdir: str, *, seeds, pretrain_steps: int, finetune_steps: int,
        robot_fraction: float, episodes: int, vqa_questions: int,
        max_episode_steps: int = MAX_EPISODE_STEPS, evals_per_stage: int = 2,
        arms=ARMS, log=print, jobs: int = 1) -> dict:
    """The whole experiment (the `arms` of ARMS); returns the results dict also written to
    results.json. With `jobs` > 1 the fine-tuning stages not yet finished run that many at a
    time in worker processes (`run_stages_in_parallel`), then are read back as a rerun would."""
    arms = tuple(arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"arms must be some of {ARMS}, got {list(arms)}")
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (stages run at a time), got {jobs}")
    start = time.perf_counter()
    workdir = os.path.abspath(workdir)
    pre_dir = os.path.join(workdir, "pretrain")
    pre_export, pretrain_vqa, learning = "", None, {}
    if any(arm != "scratch" for arm in arms):   # scratch starts from random weights
        pre_export = run_stage(stage_config(base, "pretrain", 0, pretrain_steps,
                                            evals=evals_per_stage), pre_dir, log)
        pretrain_vqa = evaluate_pretrained_vqa(pre_export, vqa_questions)
        log(f"pretrained VQA accuracy {pretrain_vqa['vqa_accuracy']:.3f}")
        learning["pretrain"] = curves(pre_dir)
    else:
        log("only the scratch arm: no web pretraining")
    stages = [(seed, arm, os.path.join(workdir, f"{arm}_seed{seed}"),
               stage_config(base, arm, seed, finetune_steps, robot_fraction, pre_export,
                            evals_per_stage), (episodes, vqa_questions, seed, max_episode_steps))
              for seed in seeds for arm in arms]
    if jobs > 1:
        pending = [(f"{arm} seed {seed}", config, stage_dir, eval_args)
                   for seed, arm, stage_dir, config, eval_args in stages
                   if not _stage_done(stage_dir, eval_settings(*eval_args))]
        if pending:
            log(f"{len(pending)} stages to train, {jobs} at a time")
            run_stages_in_parallel(pending, jobs, log)
    runs: dict = {arm: {} for arm in arms}
    for seed, arm, stage_dir, config, eval_args in stages:
        export = run_stage(config, stage_dir, log)
        runs[arm][str(seed)] = evaluate_export(export, *eval_args)
        learning[f"{arm}_seed{seed}"] = curves(stage_dir)
        log(f"{arm} seed {seed}: " + json.dumps(
            {k: round(v, 3) for k, v in runs[arm][str(seed)].items() if isinstance(v, float)}))
    table = summarize(runs)
    results = {"table": table, "runs": runs, "pretrain_vqa": pretrain_vqa, "curves": learning,
               "settings": {"seeds": list(seeds), "pretrain_steps": pretrain_steps,
                            "finetune_steps": finetune_steps, "robot_fraction": robot_fraction,
                            "episodes_per_category": episodes, "vqa_questions": vqa_questions,
                            "max_episode_steps": max_episode_steps,
                            "evals_per_stage": evals_per_stage, "arms": list(arms)},
               "wall_s": round(time.perf_counter() - start, 1)}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = markdown(table, pretrain_vqa and pretrain_vqa["vqa_accuracy"], learning)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md + "\n")
    chart(table, os.path.join(workdir, "results.png"))
    log(md)
    log(f"wrote {workdir}/results.json, results.md, results.png "
        f"({results['wall_s']:.0f}s in all)")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    run(f.config, f.workdir, seeds=[int(s) for s in f.seeds], pretrain_steps=f.pretrain_steps,
        finetune_steps=f.finetune_steps, robot_fraction=f.robot_fraction, episodes=f.episodes,
        vqa_questions=f.vqa_questions, max_episode_steps=f.max_episode_steps,
        evals_per_stage=f.evals_per_stage, arms=f.arms, jobs=f.jobs)


if __name__ == "__main__":
    define_flags()
    app.run(main)
