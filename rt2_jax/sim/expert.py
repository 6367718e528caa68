"""A scripted expert that solves every toy-world task from the simulator's state.

    env = TabletopEnv()
    expert = ScriptedExpert(env, noise_std=0.005, pause_prob=0.05)
    obs, info = env.reset(seed=3)
    expert.reset(seed=3)
    action = expert.act()   # until the episode ends; the last action has terminate = 1

A plan is a list of phases (a target position for the gripper, a gripper command and a test
for "done"); the expert moves towards the current phase's target at up to EXPERT_SPEED per step,
closed-loop, so noise and pauses are corrected. When the plan is finished and the task is solved
it emits one action with terminate = 1 and no motion; when it is not solved it starts over.
`rollout` runs one whole episode and returns its frames and actions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from rt2_jax.sim import world
from rt2_jax.sim.env import TabletopEnv

EXPERT_SPEED = 0.08      # per axis and step; below MAX_STEP_XY so noise rarely hits the bounds
PUSH_SPEED = 0.04
HOVER_Z = 0.1            # a multiple of every allowed move_quantum, like the start height
CARRY_Z = 0.3
# A pick lifts to the top of the workspace (success needs only world.LIFT_Z). A learned policy
# that misses the expert's single "done" frame keeps lifting; below the ceiling it climbs into
# heights no demonstration shows and never says done, at the ceiling its lift does nothing, so it
# stays on the very frame the expert terminated on. Every "done" between LIFT_Z and the top is
# a success, so saying it one or two grid steps early costs nothing.
PICK_Z = world.Z_MAX
# Where the expert opens the gripper over the goal (place, move near) by default; opening drops
# the held object onto the table below from any height (world.apply_action). Lowered first, the
# frame after the release (an open gripper just above an object resting on the table) is what the
# frame before every grasp shows too: only whether the object lies on the named card tells "go
# up" from "go down". A `release_z` up to CARRY_Z releases it where it was carried, so after the
# release the open gripper is higher than any approach brings it.
RELEASE_Z = 0.06         # above PUSH_Z: releasing never shoves neighbours
# Where the open gripper goes after the release before the episode ends. HOVER_Z (default) makes
# the last frame again an open gripper just above an object resting on the table, what every
# approach looks like: a policy that cannot tell "on the card" from "beside it" then says "done"
# before it has picked anything up. The top of the workspace (world.Z_MAX) gives a place the last
# frame a pick has, the gripper at the ceiling, which no other phase shows with an open gripper,
# and the same fixed point: a policy that misses the "done" frame keeps rising and stays on it.
RETREAT_Z = HOVER_Z
NEAR_GOAL = 0.12         # where move_near drops the object, from the target's centre
TOLERANCE = 0.01
# Where a phase may end within a coarser margin: aligning over an object or a goal. A grasp works
# within GRASP_RADIUS, and a camera policy cannot see 0.01 (under a pixel of a 64 px image), so
# a plan that insisted on it would teach hovering; the next phase keeps correcting x and y.
ALIGN_TOLERANCE = 0.02
MAX_ATTEMPTS = 3
# Coarsest commanded motion: one full step. With a quantum q every phase's target counts as
# reached within q / 2 per axis (a finer demand would make a quantized expert oscillate), and the
# phase moves at least q per step.
MAX_MOVE_QUANTUM = world.MAX_STEP_XY

State = world.WorldState


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    target: Callable[[State], np.ndarray]   # gripper position (x, y, z) to move towards
    gripper: float                          # closedness command during the phase
    done: Callable[[State], bool] | None = None   # default: the target is reached
    speed: float = EXPERT_SPEED
    tolerance: float = TOLERANCE                  # per axis, for the default `done`


def _at(xy_fn: Callable[[State], np.ndarray], z: float) -> Callable[[State], np.ndarray]:
    return lambda s: np.array([*xy_fn(s), z])


def _here(s: State) -> np.ndarray:
    return s.ee.copy()


def _reached(phase: Phase, s: State) -> bool:
    return bool(np.all(np.abs(phase.target(s) - s.ee) <= phase.tolerance))


def _grasp_phases(i: int, lift_z: float, slack: float = 0.0) -> list[Phase]:
    obj = lambda s: s.obj_xy[i]
    tol, align = max(TOLERANCE, slack), max(ALIGN_TOLERANCE, slack)
    return [
        Phase("open", _here, 0.0, done=lambda s: not s.gripper_closed),
        Phase("rise", lambda s: np.array([*s.ee[:2], HOVER_Z]), 0.0,
              done=lambda s: s.ee[2] >= HOVER_Z - tol),
        Phase("above", _at(obj, HOVER_Z), 0.0, tolerance=align),
        Phase("descend", _at(obj, 0.0), 0.0,
              done=lambda s: s.ee[2] <= tol and
              bool(np.all(np.abs(s.obj_xy[i] - s.ee[:2]) <= align))),
        Phase("grasp", _here, 1.0, done=lambda s: s.gripper_closed),
        Phase("lift", lambda s: np.array([*s.ee[:2], lift_z]), 1.0, tolerance=tol),
    ]


def check_retreat_z(retreat_z: float, release_z: float = RELEASE_Z) -> float:
    """`retreat_z` as a float if the expert can retreat there after releasing at `release_z`;
    else a ValueError naming it."""
    if not max(HOVER_Z, release_z) <= retreat_z <= world.Z_MAX:
        raise ValueError(f"retreat_z must be in [{max(HOVER_Z, release_z)}, {world.Z_MAX}] (from "
                         f"the hover height or the release height {release_z}, whichever is "
                         f"higher, up to the top of the workspace), got {retreat_z}")
    return float(retreat_z)


def check_release_z(release_z: float) -> float:
    """`release_z` as a float if the expert can release there; else a ValueError naming it."""
    if not RELEASE_Z <= release_z <= CARRY_Z:
        raise ValueError(f"release_z must be in [{RELEASE_Z}, {CARRY_Z}] (just above the table "
                         f"up to the carry height), got {release_z}")
    return float(release_z)


def _drop_phases(goal_xy: np.ndarray, slack: float = 0.0, retreat_z: float = RETREAT_Z,
                 release_z: float = RELEASE_Z) -> list[Phase]:
    goal = lambda s: goal_xy
    tol, align = max(TOLERANCE, slack), max(ALIGN_TOLERANCE, slack)
    return [
        Phase("carry", _at(goal, CARRY_Z), 1.0, tolerance=align),
        Phase("lower", _at(goal, release_z), 1.0, tolerance=tol),
        Phase("release", _here, 0.0, done=lambda s: not s.gripper_closed),
        Phase("retreat", lambda s: np.array([*s.ee[:2], retreat_z]), 0.0, tolerance=tol),
    ]


def _near_goal(s: State, i: int, j: int) -> np.ndarray:
    """A free spot NEAR_GOAL from object j, preferably on the side object i comes from."""
    away = s.obj_xy[i] - s.obj_xy[j]
    base = float(np.arctan2(away[1], away[0]))
    margin = world.OBJECT_RADIUS + 0.02
    others = [s.obj_xy[k] for k in range(len(s.obj_xy)) if k not in (i, j)]
    fallback = None
    for step in (0, 1, -1, 2, -2, 3, -3, 4):
        angle = base + step * np.pi / 4
        goal = s.obj_xy[j] + NEAR_GOAL * np.array([np.cos(angle), np.sin(angle)])
        if np.any(goal < margin) or np.any(goal > 1 - margin):
            continue
        if all(np.linalg.norm(goal - o) >= 2 * world.OBJECT_RADIUS for o in others):
            return goal
        fallback = goal if fallback is None else fallback
    if fallback is None:
        return np.clip(s.obj_xy[j] + np.array([NEAR_GOAL, 0.0]), margin, 1 - margin)
    return fallback


def _push_phases(s: State, i: int, direction: str, slack: float = 0.0) -> list[Phase]:
    u = world.DIRECTION_VECTORS[direction]
    tol = max(TOLERANCE, slack)
    behind = lambda s: s.obj_xy[i] - u * (world.PUSH_CONTACT + 0.03)
    # Aim just past the contact point behind the object: moves it forward and steers sideways.
    shove = lambda s: np.array([*(s.obj_xy[i] - u * (world.PUSH_CONTACT - 0.05)), 0.0])
    goal = world.PUSH_DIST + 0.05

    def pushed(s: State) -> bool:
        moved = float((s.obj_xy[i] - s.obj_start_xy[i]) @ u)
        stuck = bool(np.any(s.obj_xy[i] <= world.OBJECT_RADIUS + 1e-6) or
                     np.any(s.obj_xy[i] >= 1 - world.OBJECT_RADIUS - 1e-6))
        return moved >= goal or stuck

    return [
        Phase("open", _here, 0.0, done=lambda s: not s.gripper_closed or s.held < 0),
        Phase("rise", lambda s: np.array([*s.ee[:2], HOVER_Z]), 0.0,
              done=lambda s: s.ee[2] >= HOVER_Z - tol),
        Phase("behind", _at(behind, HOVER_Z), 0.0, tolerance=tol),
        Phase("close", _here, 1.0, done=lambda s: s.gripper_closed),
        Phase("down", _at(behind, 0.0), 1.0, tolerance=tol),
        Phase("push", shove, 1.0, done=pushed, speed=PUSH_SPEED),
        Phase("retreat", lambda s: np.array([*s.ee[:2], HOVER_Z]), 1.0, tolerance=tol),
    ]


def plan_for(state: State, task: world.Task, slack: float = 0.0,
             retreat_z: float = RETREAT_Z, release_z: float = RELEASE_Z) -> list[Phase]:
    """The phases that solve `task` from `state`; a phase's target counts as reached within
    max(its tolerance, `slack`) per axis. Place and move near release the object at
    `release_z` and then retreat to `retreat_z`."""
    i = state.index_of(task.obj)
    if task.kind == "pick":
        return _grasp_phases(i, PICK_Z, slack)
    if task.kind == "push":
        return _push_phases(state, i, task.direction, slack)
    if task.kind == "move_near":
        goal = _near_goal(state, i, state.index_of(task.target))
    else:
        goal = state.card_xy[state.card_index(task.symbol)].copy()
    return _grasp_phases(i, CARRY_Z, slack) + _drop_phases(goal, slack, retreat_z, release_z)


class ScriptedExpert:
    """Privileged-state expert for TabletopEnv.

    Args:
      env: the environment it acts in (it reads `env.unwrapped.state` and `.task`).
      noise_std: std of Gaussian noise added to dx, dy, dz (world units), for diversity.
      pause_prob: chance per step of a pause (no motion, gripper unchanged).
      gripper_flip_prob: chance per step, while the plan has the gripper open, that the
        executed command closes it (a slip). The plan's `intended_action` keeps "open", so
        labels show how to recover from a gripper closed at the wrong time. (Slips never open
        a holding gripper: re-grasping a dropped object takes most of an episode.)
      terminate_repeats: once the task is solved, this many steps are labelled terminate while
        the executed action only holds still (with noise); then the expert terminates. A policy
        then sees several solved frames labelled "done" per episode instead of one.
      move_quantum: if > 0, commanded motion is rounded to a multiple of this per axis, so a
        moving dim takes a handful of values (0, +-q, +-2q, ...) instead of a continuum; at most
        MAX_MOVE_QUANTUM so every phase still reaches its target. 0 (default): exact.
      retreat_z: the height the open gripper rises to after releasing an object (place, move
        near) before "done"; in [max(HOVER_Z, release_z), world.Z_MAX] (see RETREAT_Z).
      release_z: the height at which it opens the gripper over the goal (place, move near); in
        [RELEASE_Z, CARRY_Z] (see RELEASE_Z's comment). Both change the last phases' frames and
        labels, not what counts as success.
      perturb_prob: chance per step and motion dim (dx, dy, dz) that the executed motion is off
        by one move quantum, either way; the label (`intended_action`) is kept. DART-style data:
        states a learned policy drifts into (too low, beside the object), each labelled with
        the correction. Whole-quantum errors keep positions on the quantum grid. Needs
        move_quantum > 0.
      seed: seeds noise, pauses and slips; `reset(seed=...)` reseeds.

    Executed actions differ from `intended_action` only through noise, pauses, slips,
    perturbations and terminate holds; with all five off they are equal.
    """

    def __init__(self, env: TabletopEnv, noise_std: float = 0.0, pause_prob: float = 0.0,
                 seed: int | None = None, *, gripper_flip_prob: float = 0.0,
                 terminate_repeats: int = 0, move_quantum: float = 0.0,
                 perturb_prob: float = 0.0, retreat_z: float = RETREAT_Z,
                 release_z: float = RELEASE_Z):
        self.release_z = check_release_z(release_z)
        self.retreat_z = check_retreat_z(retreat_z, self.release_z)
        if not 0 <= move_quantum <= MAX_MOVE_QUANTUM:
            raise ValueError(f"move_quantum must be in [0, {MAX_MOVE_QUANTUM}] so every phase "
                             f"reaches its target, got {move_quantum}")
        if (noise_std < 0 or not 0 <= pause_prob < 1 or not 0 <= gripper_flip_prob < 1
                or terminate_repeats < 0):
            raise ValueError(
                "need noise_std >= 0, 0 <= pause_prob < 1, 0 <= gripper_flip_prob < 1 and "
                f"terminate_repeats >= 0, got noise_std={noise_std}, pause_prob={pause_prob}, "
                f"gripper_flip_prob={gripper_flip_prob}, terminate_repeats={terminate_repeats}")
        if not 0 <= perturb_prob < 1 or (perturb_prob and not move_quantum):
            raise ValueError(f"perturb_prob must be in [0, 1) and needs move_quantum > 0 (the "
                             f"error size), got {perturb_prob} with move_quantum={move_quantum}")
        self.env = env
        self.perturb_prob = float(perturb_prob)
        self.noise_std = noise_std
        self.pause_prob = pause_prob
        self.gripper_flip_prob = gripper_flip_prob
        self.terminate_repeats = int(terminate_repeats)
        self.move_quantum = float(move_quantum)
        self._holds = 0
        self._rng = np.random.default_rng(seed)
        self._plan: list[Phase] = []
        self._phase = 0
        self.attempts = 0
        # The action the plan asks for at the last act(), before noise and pauses: a clean label
        # for imitation while the executed (noisy) actions diversify the states (DART-style).
        self.intended_action = np.zeros(world.ACTION_DIM, dtype=np.float32)

    def reset(self, seed: int | None = None) -> None:
        """Call after env.reset(): plans for the new episode."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        env = self.env.unwrapped
        if env.state is None:
            raise RuntimeError("reset the environment before the expert")
        self._plan = self._plan_for(env.state, env.task)
        self._phase = 0
        self.attempts = 1
        self._holds = 0

    def _plan_for(self, state: State, task: world.Task) -> list[Phase]:
        return plan_for(state, task, self.move_quantum / 2, self.retreat_z, self.release_z)

    @property
    def phase_name(self) -> str:
        return self._plan[self._phase].name if self._phase < len(self._plan) else "done"

    def act(self, observation=None) -> np.ndarray:
        """The next 8-dim action (float32). `observation` is ignored: the expert sees the state."""
        del observation
        env = self.env.unwrapped
        state, task = env.state, env.task
        if not self._plan:
            raise RuntimeError("call expert.reset() after env.reset()")
        while self._phase < len(self._plan):
            phase = self._plan[self._phase]
            done = phase.done(state) if phase.done else _reached(phase, state)
            if not done:
                break
            self._phase += 1
        if self._phase == len(self._plan):
            solved = world.is_success(state, task)
            if solved or self.attempts >= MAX_ATTEMPTS:
                gripper = float(state.gripper_closed)
                self.intended_action = self._action(np.zeros(3), gripper, terminate=True)
                if solved and self._holds < self.terminate_repeats:
                    self._holds += 1
                    return self._action(self._noise(), gripper)
                return self.intended_action.copy()
            self.attempts += 1
            self._plan, self._phase = self._plan_for(state, task), 0
            return self.act()
        delta = phase.target(state) - state.ee
        if self.move_quantum:
            delta = np.round(delta / self.move_quantum) * self.move_quantum
        speed = max(phase.speed, self.move_quantum)
        move = np.clip(delta, -speed, speed)
        self.intended_action = self._action(move, phase.gripper)
        gripper = phase.gripper
        if gripper < 0.5 and self.gripper_flip_prob and self._rng.random() < self.gripper_flip_prob:
            gripper = 1.0
        if self.pause_prob and self._rng.random() < self.pause_prob:
            return self._action(np.zeros(3), float(state.gripper_closed))
        if self.perturb_prob:
            off = self._rng.random(3) < self.perturb_prob
            move = move + off * self._rng.choice((-1.0, 1.0), size=3) * self.move_quantum
        return self._action(move + self._noise(), gripper)

    def _noise(self) -> np.ndarray:
        if not self.noise_std:
            return np.zeros(3)
        return self._rng.normal(0.0, self.noise_std, size=3)

    @staticmethod
    def _action(move: np.ndarray, gripper: float, terminate: bool = False) -> np.ndarray:
        action = np.zeros(world.ACTION_DIM, dtype=np.float32)
        action[0] = 1.0 if terminate else 0.0
        action[1:4] = move
        action[7] = gripper
        return np.clip(action, world.ACTION_LOW, world.ACTION_HIGH)


@dataclasses.dataclass
class Episode:
    """One rollout: step t holds the observation before action t."""

    seed: int
    task: world.Task
    objects: list[str]
    background: str
    images: np.ndarray      # (T, H, W, 3) uint8
    actions: np.ndarray     # (T, 8) float32, executed, clipped to the action bounds
    rewards: np.ndarray     # (T,) float32
    success: bool
    terminated: bool
    intended_actions: np.ndarray | None = None   # (T, 8): the plan's actions without noise/pauses
    cards: tuple[str, ...] = ()                  # the symbols on the scene's cards
    ee: np.ndarray | None = None                 # (T, 3): end effector x, y, z before action t
    obj_xy: np.ndarray | None = None             # (T, N, 2): each object's table position


def rollout(env: TabletopEnv, expert: ScriptedExpert, seed: int,
            task: world.Task | str | None = None) -> Episode:
    """Resets env and expert with `seed` and runs the expert until the episode ends."""
    options = {"task": task} if task is not None else None
    obs, info = env.reset(seed=seed, options=options)
    expert.reset(seed=seed)
    state = env.unwrapped.state
    objects, background = list(state.names), state.background
    images, actions, intended, rewards, ee, obj_xy = [], [], [], [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = expert.act(obs)
        images.append(obs["image"])
        state = env.unwrapped.state
        ee.append(state.ee.copy())
        obj_xy.append(state.obj_xy.copy())
        actions.append(action)
        intended.append(expert.intended_action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
    return Episode(seed=seed, task=env.unwrapped.task, objects=objects, background=background,
                   images=np.stack(images), actions=np.stack(actions).astype(np.float32),
                   rewards=np.asarray(rewards, np.float32), success=bool(info["success"]),
                   terminated=terminated,
                   intended_actions=np.stack(intended).astype(np.float32),
                   cards=tuple(state.card_symbols),
                   ee=np.stack(ee).astype(np.float32), obj_xy=np.stack(obj_xy).astype(np.float32))
