"""The toy tabletop world: the embedded default robot environment and data source.

Imports numpy, gymnasium and pillow only, so a robot-side client can use it.

    from rt2_jax import sim
    env = sim.TabletopEnv()
    expert = sim.ScriptedExpert(env)
    episode = sim.rollout(env, expert, seed=0)
"""

import gymnasium as gym

from rt2_jax.sim.env import CAMERAS, MAX_EPISODE_STEPS, TabletopEnv
from rt2_jax.sim.expert import Episode, ScriptedExpert, rollout
from rt2_jax.sim.world import (
    ACTION_HIGH,
    ACTION_LOW,
    ACTION_NAMES,
    DEFAULT_HELD_OUT,
    TASK_KINDS,
    HeldOut,
    Task,
    WorldState,
)

ENV_ID = "rt2_jax/Tabletop-v0"
if ENV_ID not in gym.registry:   # gymnasium.make(ENV_ID, concepts="unseen") also works
    gym.register(ENV_ID, entry_point="rt2_jax.sim.env:TabletopEnv")

__all__ = [
    "ACTION_HIGH",
    "ACTION_LOW",
    "ACTION_NAMES",
    "CAMERAS",
    "DEFAULT_HELD_OUT",
    "ENV_ID",
    "MAX_EPISODE_STEPS",
    "TASK_KINDS",
    "Episode",
    "HeldOut",
    "ScriptedExpert",
    "TabletopEnv",
    "Task",
    "WorldState",
    "rollout",
]
