"""A fast imitation probe: does a model config learn to act from the toy world's pixels?

    python -m rt2_jax.experiments.imitation_probe --tasks=pick --steps=3000 \
        --config.model.vit.keypoints=16 [--objects=1,1] [--camera=gripper] [--json=out.jsonl]

Training a policy through `rt2_jax.train` (TFDS data, web mixture, checkpoints) takes minutes
before it says anything; this probe answers "is the image used at all?" in one: it rolls out the
scripted expert in memory (`--episodes`, labels = the expert's intended actions, motion in
multiples of `--move_quantum`), trains the config's VLM on robot frames only with the library's
own train step, and reports every `--log_every` steps, on frames of held-out episodes:
  - the teacher-forced cross-entropy (nats) and accuracy of each action token, next to the
    majority-bin accuracy and the label entropy (a model that ignores the image sits at those);
  - every `--eval_every` steps, greedy masked decoding accuracy per dim on the same frames and
    closed-loop success on `--eval_episodes` new episodes per task (seeds no training episode
    uses), through `rt2_jax.policy.Policy` like any export; also the share of episodes solved
    at some step (said "done" or not) and, per phase of the expert's plan in the states the
    policy reached, how often the policy's bin equals the expert's (where closed loop breaks);
  - with localization (`--locate_pretrain_steps`, or `--config.train.locate_weight` to keep
    regressing keypoint 0 onto the named object during robot training; with
    `--locate_robot_frames=False` only pointing rows carry points): keypoints 0 and 1's
    held-out distances from the named object and the gripper, and `grounding`
    (`rt2_jax.experiments.locate.grounding`): how often keypoint 0 is nearest the named object
    rather than a distractor, and how often a fixed sign rule on the two keypoints gives the
    expert's dx, dy (what the keypoints hold of the action), from step 0 on.
Lines are JSON (stdout, and appended to `--json`). Nothing is written to disk otherwise.

`--robustness` instead measures how precise a policy must be: the scripted expert's success
when its actions are perturbed the way a learned policy errs (one quantum too much or too little
on a share of its x, y, z steps; the gripper command flipped on a share of steps), and when it
acts on positions seen with errors (random per step, or a bias fixed per episode).
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
from absl import app, flags

TRAIN_SEED0, HELDOUT_SEED0, EVAL_SEED0 = 1_000, 900_000, 500_000
REPORTED_DIMS = ("terminate", "dx", "dy", "dz", "gripper")


def define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model and optimizer config.")
    flags.DEFINE_list("tasks", ["pick"], "Task kinds of the expert episodes (cycled).")
    flags.DEFINE_integer("episodes", 400, "Expert episodes to train on.")
    flags.DEFINE_integer("heldout_episodes", 40, "Expert episodes whose frames are held out.")
    flags.DEFINE_integer("heldout_frames", 256, "Held-out frames scored (the first ones).")
    flags.DEFINE_integer("steps", 3000, "Training steps.")
    flags.DEFINE_integer("batch_size", 32, "Frames per step.")
    flags.DEFINE_integer("log_every", 250, "Teacher-forced held-out metrics every N steps.")
    flags.DEFINE_integer("eval_every", 1000, "Decoding + closed-loop evaluation every N steps.")
    flags.DEFINE_integer("eval_episodes", 20, "Closed-loop episodes per task and evaluation.")
    flags.DEFINE_integer("max_episode_steps", 60, "Closed-loop step limit.")
    flags.DEFINE_string("camera", "fixed", "fixed | gripper.")
    flags.DEFINE_integer("image_size", 0, "Rendered image side; 0 = the config's image_size.")
    flags.DEFINE_float("move_quantum", 0.02, "Expert motion in multiples of this (0 = exact).")
    flags.DEFINE_float("noise_std", 0.005, "Expert motion noise (executed, not labelled).")
    flags.DEFINE_integer("point_pretrain_steps", 0,
                         "First train this many steps on pointing questions only (the web "
                         "pretraining stage in miniature), then `--steps` on the mixture.")
    flags.DEFINE_float("gripper_flip_prob", 0.0,
                       "Expert slips: the executed open command is a close with this probability "
                       "per step (label kept), so the data shows recovering from a wrong close.")
    flags.DEFINE_float("perturb_prob", 0.0,
                       "Expert perturbations (DART): each executed dx, dy, dz is off by one "
                       "quantum with this probability per step (label kept), so the data shows "
                       "how to recover from a policy's own errors.")
    flags.DEFINE_float("grid", 0.0,
                       "Objects, cards and the gripper's start on multiples of this (table "
                       "units; TabletopEnv(grid=...)); 0 = anywhere.")
    flags.DEFINE_list("objects", [], "min,max objects per scene (default: the world's).")
    flags.DEFINE_integer("seed", 0, "Parameter initialization and batch order.")
    flags.DEFINE_string("json", "", "Also append the JSON lines to this file.")
    flags.DEFINE_string("init_keypoints", "", "Start the image tower's keypoint head from a "
                        "trained pixel policy's (.npz from `pixel_policy --save`).")
    flags.DEFINE_integer("locate_pretrain_steps", 0,
                         "First train keypoints 0 and 1 by regression onto the task's object "
                         "and the gripper (rt2_jax.experiments.locate) for this many steps; "
                         "robot training then reports their held-out distances too.")
    flags.DEFINE_float("point_fraction", 0.0,
                       "Share of each batch that is pointing questions about the same training "
                       "frames (\"point to the gripper\", \"point to the <object>\"; answers "
                       "are location tokens), as web data with location answers would teach.")
    flags.DEFINE_bool("locate_robot_frames", True,
                      "With --config.train.locate_weight: robot frames carry the named "
                      "object's true position as a localization label. False: only the "
                      "pointing rows (--point_fraction, --point_pretrain_steps) carry points, "
                      "as in RT-2, where grounding comes from web data alone.")
    flags.DEFINE_bool("locate_gripper_points", True,
                      "With --config.train.locate_weight: pointing rows that ask for the "
                      "gripper also regress keypoint 0 onto it. False: they train only their "
                      "text answer, and keypoint 0 learns objects alone.")
    flags.DEFINE_integer("terminate_repeats", 0,
                         "Expert data: once a task is solved, this many more frames labelled "
                         "\"done\" while it holds still (sim.ScriptedExpert's "
                         "terminate_repeats), instead of one per episode.")
    flags.DEFINE_bool("robustness", False, "Measure the expert's success under action errors.")
    flags.DEFINE_list("eval_temperatures", ["0"],
                      "Closed-loop evaluation once per sampling temperature (0 = greedy). A "
                      "greedy policy repeats its mistake in a state it does not leave; sampling "
                      "turns a systematic error into a random one, which the world forgives "
                      "(see --robustness).")
    flags.DEFINE_list("eval_terminate_thresholds", ["0.5"],
                      "Closed-loop evaluation once per terminate threshold (say \"done\" when "
                      "p(terminate) >= it; 0.5 = argmax), for each temperature: one trained "
                      "model, several stopping rules.")


# (share of x and y steps off by one quantum, of z steps, of steps with the gripper flipped)
ROBUSTNESS_CASES = ((0, 0, 0), (0.25, 0, 0), (0.4, 0, 0), (0, 0.25, 0), (0.25, 0.25, 0),
                    (0, 0, 0.05), (0, 0, 0.1), (0.25, 0.25, 0.05))


def _expert_success(task: str, *, episodes: int, quantum: float, max_episode_steps: int,
                    make_act) -> float:
    """Success rate of the scripted expert on `episodes` new episodes of `task`, each step's
    action from `act()` where `act = make_act(env, expert)` is made after every reset."""
    from rt2_jax import sim

    env = sim.TabletopEnv(max_episode_steps=max_episode_steps)
    expert = sim.ScriptedExpert(env, move_quantum=quantum)
    wins = 0
    for e in range(episodes):
        env.reset(seed=EVAL_SEED0 + e, options={"task": task})
        expert.reset(seed=e)
        act = make_act(env, expert)
        while True:
            _, reward, terminated, truncated, _ = env.step(act())
            if terminated or truncated:
                wins += reward > 0
                break
    return wins / episodes


def expert_robustness(task: str, p_xy: float, p_z: float, p_gripper: float, *, episodes: int,
                      quantum: float, max_episode_steps: int, seed: int = 0) -> float:
    """Success rate of the scripted expert on `episodes` new episodes of `task` when each of
    dx, dy (probability p_xy) and dz (p_z) is off by +-quantum and the gripper command is
    flipped with probability p_gripper, independently per step."""
    if quantum <= 0:
        raise ValueError(f"robustness needs a move quantum > 0 (the error size), got {quantum}")
    rng = np.random.default_rng(seed)

    def make_act(env, expert):
        def act():
            action = expert.act().copy()
            for dim, p in ((1, p_xy), (2, p_xy), (3, p_z)):
                if rng.random() < p:
                    action[dim] += rng.choice((-quantum, quantum))
            if rng.random() < p_gripper:
                action[7] = 1.0 - action[7]
            return action
        return act

    return _expert_success(task, episodes=episodes, quantum=quantum,
                           max_episode_steps=max_episode_steps, make_act=make_act)


# (std of a fresh error per step, std of an error fixed for the episode) on every x, y seen
PERCEPTION_CASES = ((0.0, 0.0), (0.02, 0.0), (0.05, 0.0), (0.0, 0.01), (0.0, 0.02),
                    (0.0, 0.03), (0.02, 0.02))


def perception_robustness(task: str, sigma: float, bias: float, *, episodes: int,
                          quantum: float, max_episode_steps: int, seed: int = 0) -> float:
    """Success rate of the scripted expert on `episodes` new episodes of `task` when it decides
    from positions seen with errors: the gripper's and every object's x, y are off by a normal
    error of std `sigma` drawn anew each step plus one of std `bias` drawn once per episode
    (per thing), as a policy that misreads positions would be."""
    import copy

    if sigma < 0 or bias < 0:
        raise ValueError(f"sigma and bias must be >= 0, got {sigma}, {bias}")
    rng = np.random.default_rng(seed)

    def make_act(env, expert):
        n = len(env.unwrapped.state.obj_xy)
        ee_bias, obj_bias = rng.normal(0, bias, 2), rng.normal(0, bias, (n, 2))

        def act():
            true = env.unwrapped.state
            seen = copy.deepcopy(true)
            seen.ee[:2] += ee_bias + rng.normal(0, sigma, 2)
            seen.obj_xy += obj_bias + rng.normal(0, sigma, (n, 2))
            env.unwrapped.state = seen
            try:
                return expert.act()
            finally:
                env.unwrapped.state = true
        return act

    return _expert_success(task, episodes=episodes, quantum=quantum,
                           max_episode_steps=max_episode_steps, make_act=make_act)


def collect(env, expert, tasks, n: int, seed0: int, points: list | None = None,
            scenes: list | None = None):
    """(images uint8 [T,S,S,3], instructions [T], intended actions float32 [T,8]). With a
    `points` list, appends per frame (gripper xy, task object xy, task object name); with a
    `scenes` list, (every object's xy [N, 2], the task object's index)."""
    from rt2_jax.sim import expert as expert_lib

    images, instructions, actions = [], [], []
    for e in range(n):
        ep = expert_lib.rollout(env, expert, seed=seed0 + e, task=tasks[e % len(tasks)])
        images.append(ep.images)
        instructions += [ep.task.instruction] * len(ep.images)
        actions.append(ep.intended_actions)
        k = ep.objects.index(ep.task.obj)
        if points is not None:
            points += [(ep.ee[t, :2], ep.obj_xy[t, k], ep.task.obj)
                       for t in range(len(ep.images))]
        if scenes is not None:
            scenes += [(ep.obj_xy[t], k) for t in range(len(ep.images))]
    return np.concatenate(images), instructions, np.concatenate(actions)


def pointing_examples(tokenizer, points, max_prompt_len: int, max_target_len: int):
    """Per frame, two pointing questions: about the gripper (row 2t) and the task's object
    (row 2t+1). Returns (prompt ids, prompt mask, target ids [2T, max_target_len])."""
    from rt2_jax.preprocessing import encode_prompts
    from rt2_jax.sim import vqa

    questions, answers = [], []
    for gripper_xy, object_xy, name in points:
        questions += ["point to the gripper", f"point to the {name}"]
        answers += [vqa.location_answer(gripper_xy), vqa.location_answer(object_xy)]
    tokens, mask = encode_prompts(tokenizer, questions, max_prompt_len)
    targets = np.zeros((len(answers), max_target_len), np.int32)
    for row, answer in enumerate(answers):
        ids = [*tokenizer.encode(answer), tokenizer.eos_id]
        targets[row, :len(ids)] = ids
    return tokens, mask, targets


def label_baselines(bins: np.ndarray) -> dict[str, dict[str, float]]:
    """Per reported dim: the majority bin's frequency and the label entropy (nats)."""
    from rt2_jax import actions as actions_lib

    out = {}
    for d, name in enumerate(actions_lib.ACTION_DIMS):
        if name in REPORTED_DIMS:
            _, counts = np.unique(bins[:, d], return_counts=True)
            p = counts / counts.sum()
            out[name] = {"majority": round(float(p.max()), 3),
                         "entropy": round(float(-(p * np.log(p)).sum()), 3)}
    return out


def run(config, *, tasks, episodes, heldout_episodes, heldout_frames, steps, batch_size,
        log_every, eval_every, eval_episodes, max_episode_steps, camera, image_size,
        move_quantum, noise_std, objects, seed, emit, point_fraction: float = 0.0,
        gripper_flip_prob: float = 0.0, point_pretrain_steps: int = 0,
        eval_temperatures: tuple[float, ...] = (0.0,), perturb_prob: float = 0.0,
        grid: float = 0.0, init_keypoints: str = "", locate_pretrain_steps: int = 0,
        locate_robot_frames: bool = True, locate_gripper_points: bool = True,
        terminate_repeats: int = 0,
        eval_terminate_thresholds: tuple[float, ...] = (0.5,)) -> dict:
    """Runs the probe; `emit(dict)` receives every report. Returns the last evaluation.
    `objects` (min, max) sets the objects per scene of every episode, evaluation included."""
    from rt2_jax import sim

    with probe_world(tasks, objects):
        return _run(config, sim, tasks, episodes, heldout_episodes, heldout_frames, steps,
                    batch_size, log_every, eval_every, eval_episodes, max_episode_steps, camera,
                    image_size, move_quantum, noise_std, seed, emit, point_fraction,
                    gripper_flip_prob, point_pretrain_steps, tuple(eval_temperatures),
                    perturb_prob, grid, init_keypoints, locate_pretrain_steps,
                    locate_robot_frames, locate_gripper_points, terminate_repeats,
                    tuple(eval_terminate_thresholds))


def _run(config, sim, tasks, episodes, heldout_episodes, heldout_frames, steps, batch_size,
         log_every, eval_every, eval_episodes, max_episode_steps, camera, image_size,
         move_quantum, noise_std, seed, emit, point_fraction, gripper_flip_prob,
         point_pretrain_steps, eval_temperatures, perturb_prob, grid, init_keypoints,
         locate_pretrain_steps, locate_robot_frames, locate_gripper_points,
         terminate_repeats, eval_terminate_thresholds) -> dict:
    import jax
    import jax.numpy as jnp

    from rt2_jax import actions as actions_lib
    from rt2_jax import decoding, train_state
    from rt2_jax import tokenizer as tokenizer_lib
    from rt2_jax.models.encoder_decoder import shift_right
    from rt2_jax.policy import Policy
    from rt2_jax.preprocessing import encode_robot_prompts, normalize_actions, resize_image

    size = int(config.image_size)
    render_size = image_size or max(size, sim.render.MIN_IMAGE_SIZE)
    env = sim.TabletopEnv(image_size=render_size, camera=camera, grid=grid)
    expert = sim.ScriptedExpert(env, noise_std=noise_std, seed=seed, move_quantum=move_quantum,
                                gripper_flip_prob=gripper_flip_prob, perturb_prob=perturb_prob,
                                terminate_repeats=terminate_repeats)
    t0 = time.time()
    if not 0.0 <= point_fraction < 1.0:
        raise ValueError(f"point_fraction must be in [0, 1), got {point_fraction}")
    if point_pretrain_steps < 0:
        raise ValueError(f"point_pretrain_steps must be >= 0, got {point_pretrain_steps}")
    if locate_pretrain_steps < 0:
        raise ValueError(f"locate_pretrain_steps must be >= 0, got {locate_pretrain_steps}")
    if locate_pretrain_steps:
        from rt2_jax.experiments import locate

        locate.check_model(config, camera)
    if not eval_temperatures or any(t < 0 for t in eval_temperatures):
        raise ValueError(f"eval_temperatures must be >= 0 (0 = greedy), got {eval_temperatures}")
    if not eval_terminate_thresholds or any(not 0 < t < 1 for t in eval_terminate_thresholds):
        raise ValueError("eval_terminate_thresholds must be strictly between 0 and 1 (0.5 = "
                         f"argmax), got {eval_terminate_thresholds}")
    points, h_points, h_scenes = [], [], []
    images, instructions, acts = collect(env, expert, tasks, episodes, TRAIN_SEED0, points)
    h_images, h_instr, h_acts = collect(env, expert, tasks, heldout_episodes, HELDOUT_SEED0,
                                        h_points, h_scenes)
    h_points, h_scenes = h_points[:heldout_frames], h_scenes[:heldout_frames]
    h_images, h_instr, h_acts = (h_images[:heldout_frames], h_instr[:heldout_frames],
                                 h_acts[:heldout_frames])
    if render_size != size:
        images = np.stack([resize_image(i, size) for i in images])
        h_images = np.stack([resize_image(i, size) for i in h_images])

    config = config.copy_and_resolve_references()
    config.data.global_batch_size = batch_size
    # --config.train.locate_weight=W: keypoint 0 keeps being regressed onto the named object
    # during robot training (rt2_jax.localization's loss, as rt2_jax.train applies it to web
    # pointing answers); here every robot frame carries its object's true position, and the
    # pointing rows (--point_fraction) the point they ask for.
    locate_weight = float(config.train.get("locate_weight", 0.0))
    if locate_weight:
        from rt2_jax.experiments import locate

        locate.check_model(config, camera)
        if not (locate_robot_frames or point_fraction or point_pretrain_steps):
            raise ValueError("locate_robot_frames=False leaves the localization loss "
                             "(config.train.locate_weight) nothing to train on: add pointing "
                             "rows (point_fraction > 0 or point_pretrain_steps > 0).")
        with config.unlocked():
            config.data.sources.robot.locate_answers = True
    track_locate = bool(locate_pretrain_steps or locate_weight)
    config.max_target_len = actions_lib.NUM_DIMS + 1
    tok = tokenizer_lib.Tokenizer(config.tokenizer.get("model_path") or None)
    bounds = actions_lib.ActionBounds(tuple(acts[:, 1:].min(0)), tuple(acts[:, 1:].max(0)))
    atok = actions_lib.ActionTokenizer(bounds, tok, config.actions.mapping)
    targets = atok.target_token_ids(acts)
    h_targets = atok.target_token_ids(h_acts)
    h_bins = atok.encode(h_acts)
    norm = normalize_actions(acts, *bounds.limits())
    prompts, prompt_index = np.unique(instructions, return_inverse=True)
    p_tokens, p_mask = encode_robot_prompts(tok, list(prompts), config.max_prompt_len)
    h_tokens, h_mask = encode_robot_prompts(tok, h_instr, config.max_prompt_len)
    n_point = round(point_fraction * batch_size)
    if n_point or point_pretrain_steps:
        pt_tokens, pt_mask, pt_targets = pointing_examples(
            tok, points, config.max_prompt_len, config.max_target_len)
        hp_tokens, hp_mask, hp_targets = pointing_examples(
            tok, h_points, config.max_prompt_len, config.max_target_len)
        hp_images = np.repeat(h_images, 2, axis=0)
    emit({"frames": len(images), "heldout_frames": len(h_images),
          "collect_s": round(time.time() - t0, 1),
          "labels": label_baselines(h_bins)})

    if track_locate:   # keypoints 0 and 1's targets, and the held-out scenes for `grounding`
        train_locate, h_locate = locate.locate_targets(points), locate.locate_targets(h_points)
        h_scene_xy, h_named = [xy for xy, _ in h_scenes], np.array([k for _, k in h_scenes])
    setup = train_state.make_setup(config)
    state = train_state.init_state(setup, seed)
    if init_keypoints:
        from rt2_jax.experiments import pixel_policy

        img = pixel_policy.with_keypoint_head(state.params["img"], init_keypoints,
                                              int(config.model.vit.get("keypoints", 0)))
        state = state.replace(params={**state.params, "img": img})
    if locate_pretrain_steps:
        i_tokens, i_mask = p_tokens[prompt_index], p_mask[prompt_index]
        params = locate.pretrain(
            setup.model, state.params, images=images, tokens=i_tokens, mask=i_mask,
            targets=train_locate, heldout=(h_images, h_tokens, h_mask, h_locate),
            steps=locate_pretrain_steps, batch_size=batch_size,
            learning_rate=float(config.train.learning_rate), seed=seed, log_every=log_every,
            emit=emit)
        state = state.replace(params=params)
    tables = train_state.ActionTables.build(atok, int(config.model.vocab_size))
    step_fn = train_state.make_train_step(setup, tables, 1)
    model = setup.model
    dims = [actions_lib.ACTION_DIMS.index(n) for n in REPORTED_DIMS]

    @jax.jit
    def teacher_forced(params, image, tokens, mask, target):
        logits = model.apply({"params": params}, image, tokens, mask, shift_right(target))
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, target[..., None], -1)[..., 0]
        return nll.mean(0), (jnp.argmax(logits, -1) == target).mean(0)

    if track_locate:
        # Whether robot training keeps (or learns) what localization teaches: the held-out
        # distances of keypoints 0 and 1, reported beside the action metrics.
        _, _, locate_predict = locate.make_fns(model, float(config.train.learning_rate))

    def held_out_report(params) -> dict:
        ce, acc = jax.device_get(teacher_forced(params, h_images, h_tokens, h_mask, h_targets))
        named = list(zip(REPORTED_DIMS, dims, strict=True))
        report = {"tf_ce": {n: round(float(ce[d]), 3) for n, d in named},
                  "tf_acc": {n: round(float(acc[d]), 3) for n, d in named}}
        if track_locate:
            got = np.asarray(locate_predict(params, h_images, h_tokens, h_mask))
            report["locate_dist"] = locate.distances(got, h_locate)
            report["grounding"] = locate.grounding(got, h_scene_xy, h_named, h_acts,
                                                   move_quantum)
        return report

    if n_point or point_pretrain_steps:
        number_ids = actions_lib.integer_action_ids(tok)   # the ids of "0".."255"
        number_of = np.full(int(config.model.vocab_size), -1)
        number_of[number_ids] = np.arange(len(number_ids))
        # The held-out reference points [2T, 2] as grid integers (the answers' "x y").
        hp_want = number_of[hp_targets[:, :2]].astype(np.float64)

    @jax.jit
    def point_greedy(params, image, tokens, mask):
        """Greedy "x y" answers restricted to the number tokens: [B, 2] ints 0..255."""
        out = jnp.zeros((image.shape[0], config.max_target_len), jnp.int32)
        picks = []
        for pos in range(2):
            logits = model.apply({"params": params}, image, tokens, mask, shift_right(out))
            pick = jnp.argmax(logits[:, pos][:, number_ids], -1)
            out = out.at[:, pos].set(jnp.asarray(number_ids)[pick])
            picks.append(pick)
        return jnp.stack(picks, 1)

    def pointing_report(params) -> dict:
        """Held-out pointing: mean distance (table units) of the greedy answer, per subject."""
        got = np.asarray(point_greedy(params, hp_images, hp_tokens, hp_mask), np.float64)
        dist = np.linalg.norm(got - hp_want, axis=1) / 256
        out = {"point_dist": {"gripper": round(float(dist[0::2].mean()), 3),
                              "object": round(float(dist[1::2].mean()), 3)}}
        if track_locate:
            # Keypoint 0 under the pointing prompts themselves (what the localization loss
            # trains there), next to `locate_dist` under the robot prompts: the gap is how
            # much of the pointing skill carries over to "pick up the X".
            # Rows 2t, 2t+1 ask for frame t's gripper and object: keypoint 0's answers to
            # them, laid out as [T, (object, gripper), 2] like h_locate.
            kp0 = np.asarray(locate_predict(params, hp_images, hp_tokens, hp_mask))[:, 0]
            pairs = kp0.reshape(-1, 2, 2)   # [T, (gripper row, object row), 2]
            by_frame = np.empty_like(pairs)
            by_frame[:, locate.GRIPPER_KEYPOINT], by_frame[:, locate.OBJECT_KEYPOINT] = (
                pairs[:, 0], pairs[:, 1])
            out["point_keypoint_dist"] = locate.distances(by_frame, h_locate)
        return out

    def evaluate(params) -> dict:
        # One policy per (temperature, terminate threshold); the plain greedy one (built anyway
        # when asked for) also decodes the held-out frames, so its compiled loop serves both.
        policies = {(t, th): Policy(params, config, atok, seed=seed,
                                    sampling=decoding.Sampling(temperature=float(t),
                                                               terminate_threshold=float(th)))
                    for t in eval_temperatures for th in eval_terminate_thresholds}
        greedy = policies.get((0.0, 0.5)) or Policy(params, config, atok)
        decoded = greedy.decode(h_images, h_tokens, h_mask)["bins"]
        report = {"decoded_acc": {n: round(float((decoded[:, d] == h_bins[:, d]).mean()), 3)
                                  for n, d in zip(REPORTED_DIMS, dims, strict=True)}}
        for (temperature, threshold), policy in policies.items():
            loop = closed_loop(policy)
            key = "_".join(
                ([f"temperature_{temperature:g}"] if len(eval_temperatures) > 1 else [])
                + ([f"terminate_threshold_{threshold:g}"]
                   if len(eval_terminate_thresholds) > 1 else []))
            if key:
                report[key] = loop
            else:
                report.update(loop)
        return report

    def closed_loop(policy) -> dict:
        success, solved_any, agree, agree_steps = {}, {}, {}, {}
        for task in tasks:
            envs = [sim.TabletopEnv(image_size=render_size, camera=camera, grid=grid,
                                    max_episode_steps=max_episode_steps)
                    for _ in range(eval_episodes)]
            obs = [e.reset(seed=EVAL_SEED0 + i, options={"task": task})[0]
                   for i, e in enumerate(envs)]
            # A noise-free expert beside each episode says what it would do in the state the
            # policy reached (its phase machine follows the state, so it tracks the policy).
            guides = [sim.ScriptedExpert(e, move_quantum=move_quantum) for e in envs]
            for g in guides:
                g.reset()
            live, wins, solved = list(range(eval_episodes)), 0, set()
            while live:
                acts_now = policy.act_batch(np.stack([obs[i]["image"] for i in live]),
                                            [obs[i]["instruction"] for i in live])
                for i in live:
                    guides[i].act()
                hits = atok.encode(acts_now) == atok.encode(
                    np.stack([guides[i].intended_action for i in live]))
                still = []
                for k, i in enumerate(live):
                    phase = guides[i].phase_name
                    agree_steps[phase] = agree_steps.get(phase, 0) + 1
                    agree[phase] = agree.get(phase, 0) + hits[k]
                    obs[i], reward, terminated, truncated, info = envs[i].step(acts_now[k])
                    wins += reward > 0
                    if info["success"]:
                        solved.add(i)
                    if not (terminated or truncated):
                        still.append(i)
                live = still
            success[task] = wins / eval_episodes
            # Solved at some step, whether or not the policy then said it was done: tells a
            # policy that cannot act from one that cannot tell when to stop.
            solved_any[task] = len(solved) / eval_episodes
        return {"success": success, "solved_any_step": solved_any,
                # Closed loop, per phase of the expert's plan in the state reached: steps spent
                # there and the share on which the policy's bin equals the expert's, per dim.
                "closed_loop_agreement": {
                    phase: {"steps": n, **{name: round(float(agree[phase][d] / n), 2)
                                          for name, d in zip(REPORTED_DIMS, dims, strict=True)}}
                    for phase, n in sorted(agree_steps.items(), key=lambda kv: -kv[1])}}

    rng = np.random.default_rng(seed)
    t0, last = time.time(), {}

    def pointing_batch(n: int) -> dict:
        """n random pointing rows (web rows: no action) about the training frames."""
        rows = rng.integers(0, len(pt_targets), size=n)
        out = {"image": images[rows // 2], "encoder_tokens": pt_tokens[rows],
               "encoder_mask": pt_mask[rows], "decoder_tokens": pt_targets[rows],
               "decoder_loss_mask": (pt_targets[rows] > 0).astype(np.float32),
               "source": np.zeros(n, np.int32), "is_robot": np.zeros(n, bool),
               "action": np.zeros((n, 8), np.float32)}
        if locate_weight:   # row 2t asks for frame t's gripper, row 2t+1 for its object
            subject = np.where(rows % 2 == 0, locate.GRIPPER_KEYPOINT, locate.OBJECT_KEYPOINT)
            on = (rows % 2 == 1) | locate_gripper_points
            out.update(locate_uv=train_locate[rows // 2, subject][:, None],
                       locate_mask=on.astype(np.float32)[:, None])
        return out

    for pre in range(1, point_pretrain_steps + 1):
        state, _ = step_fn(state, pointing_batch(batch_size))
        if pre % log_every == 0 or pre == point_pretrain_steps:
            emit(dict(pretrain_step=pre, seconds=round(time.time() - t0),
                      **pointing_report(state.params)))
    if track_locate:   # where robot training starts from (after any localization pretraining)
        emit(dict(step=0, seconds=round(time.time() - t0), **held_out_report(state.params)))
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(images), size=batch_size - n_point)
        batch = {"image": images[idx], "encoder_tokens": p_tokens[prompt_index[idx]],
                 "encoder_mask": p_mask[prompt_index[idx]], "decoder_tokens": targets[idx],
                 "decoder_loss_mask": np.ones(targets[idx].shape, np.float32),
                 "source": np.zeros(len(idx), np.int32), "is_robot": np.ones(len(idx), bool),
                 "action": norm[idx].astype(np.float32)}
        if locate_weight:   # without locate_robot_frames only the pointing rows count
            batch.update(locate_uv=train_locate[idx, locate.OBJECT_KEYPOINT][:, None],
                         locate_mask=np.full((len(idx), 1), float(locate_robot_frames),
                                             np.float32))
        if n_point:
            extra = pointing_batch(n_point)
            batch = {key: np.concatenate([value, extra[key]]) for key, value in batch.items()}
        state, metrics = step_fn(state, batch)
        report = {}
        if step % log_every == 0 or step == steps:
            m = jax.device_get(metrics)
            report.update(loss=round(float(m["loss_sum"] / max(m["token_count"], 1)), 4),
                          **held_out_report(state.params))
            # The keypoints' own action readout (vit.keypoint_action_head), on this batch.
            report.update({k: round(v, 4) for k, v in
                           train_state.summarize_keypoint_actions(m).items()})
            if locate_weight:   # rows of this batch the localization loss saw
                report["batch_locate_rows"] = int(m["locate_count"])
            if n_point or point_pretrain_steps:
                report.update(pointing_report(state.params))
        if step % eval_every == 0 or step == steps:
            report.update(evaluate(state.params))
            last = dict(step=step, **report)
        if report:
            emit(dict(step=step, seconds=round(time.time() - t0), **report))
    return last


def json_emitter(path: str):
    """emit(record): one JSON line to stdout and, when `path` is set, appended to that file."""
    def emit(record):
        line = json.dumps(record)
        print(line, flush=True)
        if path:
            with open(path, "a") as out:
                out.write(line + "\n")
    return emit


@contextlib.contextmanager
def probe_world(tasks, objects):
    """Checks the task kinds and, inside the block, sets the world's objects per scene to
    `objects` ("min", "max"; empty = the world's own), restoring it afterwards."""
    from rt2_jax.sim import world

    for task in tasks:
        if task not in world.TASK_KINDS:
            raise ValueError(f"task {task!r} is not one of {world.TASK_KINDS}")
    scene_objects = world.OBJECTS_PER_SCENE
    if objects:
        low, high = (int(v) for v in objects)
        if not 1 <= low <= high:
            raise ValueError(f"objects must be min,max with 1 <= min <= max, got {objects}")
        scene_objects = (low, high)
    saved, world.OBJECTS_PER_SCENE = world.OBJECTS_PER_SCENE, scene_objects
    try:
        yield
    finally:
        world.OBJECTS_PER_SCENE = saved


def main(argv):
    del argv
    f = flags.FLAGS
    emit = json_emitter(f.json)
    if f.robustness:
        for task in f.tasks:
            for p_xy, p_z, p_gripper in ROBUSTNESS_CASES:
                emit({"task": task, "p_xy": p_xy, "p_z": p_z, "p_gripper": p_gripper,
                      "expert_success": expert_robustness(
                          task, p_xy, p_z, p_gripper, episodes=100, quantum=f.move_quantum,
                          max_episode_steps=f.max_episode_steps)})
            for sigma, bias in PERCEPTION_CASES:
                emit({"task": task, "position_noise": sigma, "position_bias": bias,
                      "expert_success": perception_robustness(
                          task, sigma, bias, episodes=100, quantum=f.move_quantum,
                          max_episode_steps=f.max_episode_steps)})
        return
    emit({"probe": {k: f[k].value for k in ("tasks", "episodes", "steps", "batch_size",
                                             "camera", "move_quantum", "objects", "seed",
                                             "point_fraction", "gripper_flip_prob",
                                             "point_pretrain_steps", "eval_temperatures",
                                             "perturb_prob", "grid", "init_keypoints",
                                             "locate_pretrain_steps", "locate_robot_frames",
                                             "locate_gripper_points", "terminate_repeats",
                                             "eval_terminate_thresholds")},
          "vit": f.config.model.vit.to_dict(), "optimizer": f.config.train.optimizer,
          "learning_rate": f.config.train.learning_rate,
          "train": json.loads(f.config.train.to_json_best_effort())})
    run(f.config, tasks=f.tasks, episodes=f.episodes, heldout_episodes=f.heldout_episodes,
        heldout_frames=f.heldout_frames, steps=f.steps, batch_size=f.batch_size,
        log_every=f.log_every, eval_every=f.eval_every, eval_episodes=f.eval_episodes,
        max_episode_steps=f.max_episode_steps, camera=f.camera, image_size=f.image_size,
        move_quantum=f.move_quantum, noise_std=f.noise_std, objects=f.objects, seed=f.seed,
        emit=emit, point_fraction=f.point_fraction, gripper_flip_prob=f.gripper_flip_prob,
        point_pretrain_steps=f.point_pretrain_steps,
        eval_temperatures=tuple(float(t) for t in f.eval_temperatures),
        perturb_prob=f.perturb_prob, grid=f.grid, init_keypoints=f.init_keypoints,
        locate_pretrain_steps=f.locate_pretrain_steps, locate_robot_frames=f.locate_robot_frames,
        locate_gripper_points=f.locate_gripper_points, terminate_repeats=f.terminate_repeats,
        eval_terminate_thresholds=tuple(float(t) for t in f.eval_terminate_thresholds))


if __name__ == "__main__":
    define_flags()
    app.run(main)
