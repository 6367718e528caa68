"""`TabletopEnv`: the toy world behind the gymnasium API.

    env = TabletopEnv()
    obs, info = env.reset(seed=0, options={"task": "pick"})   # or a Task, or no task
    obs, reward, terminated, truncated, info = env.step(action)   # 8 dims, see world.py

The episode terminates when the action's terminate dim is >= 0.5 (the policy says it is done);
reward is 1.0 on that step if the task is then solved, else 0.0. `info["success"]` says at every
step whether the task is solved now. The episode is truncated after `max_episode_steps`.
Same seed and options -> same scene, instruction, images and dynamics.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from rt2_jax.sim import render, world

MAX_EPISODE_STEPS = 80
CAMERAS = ("fixed", "gripper")


class TabletopEnv(gym.Env):
    """Top-down tabletop with objects, cards and a gripper; RT-2 actions in world units.

    Args:
      max_episode_steps: truncation limit.
      concepts: the evaluation category (world.CONCEPTS): 'seen' (default; no held-out
        object, background or card symbol anywhere), 'unseen_objects' (alias 'unseen'; the
        task's object is held out), 'unseen_backgrounds' (a held-out table), 'symbols'
        (place_on_card naming a held-out card symbol) or 'all'.
      held_out: which objects and backgrounds count as held out.
      image_size: side of the square RGB observation.
      camera: "fixed" (default): the whole table from above, the gripper moving in the frame;
        "gripper": a downward camera above the gripper that moves with it in x and y and sees
        the whole table from anywhere (render.gripper_view). `render_table()` always gives the
        fixed view (for people watching).
      grid: 0 (default): objects, cards and the gripper's start anywhere. > 0 (at most 0.2):
        on multiples of `grid` table units. With grid = the expert's move quantum (0.1) every
        gripper-to-object or -card offset is a whole number of steps, so no frame sits at the
        edge of a decision ("move or stop here?") that a camera policy would have to resolve
        to a fraction of a pixel. Move-near drop points and push approach points stay off the
        grid.
      card_half: half the side of the cards (world.check_card_half; default world.CARD_HALF,
        about an object's width: an object held over a card, or set down on it, hides most of
        it). Placing succeeds with the object's centre world.ON_CARD_MARGIN inside the card.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, max_episode_steps: int = MAX_EPISODE_STEPS, concepts: str = "seen",
                 held_out: world.HeldOut = world.DEFAULT_HELD_OUT,
                 image_size: int = render.IMAGE_SIZE, render_mode: str | None = "rgb_array",
                 camera: str = "fixed", grid: float = 0.0, card_half: float = world.CARD_HALF):
        if camera not in CAMERAS:
            raise ValueError(f"camera {camera!r} is not one of {CAMERAS}")
        if not isinstance(image_size, int | np.integer) or image_size < render.MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer >= {render.MIN_IMAGE_SIZE} (smaller "
                             f"images cannot show the cards' symbols), got {image_size!r}; "
                             "render at 40+ px and resize for a smaller model input.")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        world.check_concepts(concepts, held_out)
        self.max_episode_steps = max_episode_steps
        self.concepts = concepts
        self.held_out = held_out
        self.image_size = image_size
        self.camera = camera
        self.grid = world.check_grid(grid)
        self.card_half = world.check_card_half(card_half)
        self.render_mode = render_mode
        self.action_space = gym.spaces.Box(world.ACTION_LOW, world.ACTION_HIGH, dtype=np.float32)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8),
            "instruction": gym.spaces.Text(
                max_length=200, charset=string.ascii_lowercase + string.digits + " "),
        })
        self.state: world.WorldState | None = None
        self.task: world.Task | None = None
        self._static: np.ndarray | None = None
        self._steps = 0
        self._done = True

    # ---------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        task = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; only 'task' is accepted")
        if isinstance(task, dict):
            task = world.Task(**task)
        if task is not None and not isinstance(task, str | world.Task):
            raise TypeError(f"options['task'] must be a Task, a dict of Task fields or one of "
                            f"{world.TASK_KINDS}, got {type(task).__name__}")
        if isinstance(task, str) and task not in world.TASK_KINDS:
            raise ValueError(f"task kind {task!r} is not one of {world.TASK_KINDS}")
        self.state, self.task = world.sample_episode(
            self.np_random, task, held_out=self.held_out, concepts=self.concepts, grid=self.grid,
            card_half=self.card_half)
        self._static = render.render_static(self.state, self.image_size)
        self._steps = 0
        self._done = False
        return self._observation(), self._info()

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended (or never started); call reset() first")
        clipped = world.apply_action(self.state, action)
        self._steps += 1
        success = world.is_success(self.state, self.task)
        terminated = bool(clipped[0] >= 0.5)
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._done = terminated or truncated
        reward = 1.0 if terminated and success else 0.0
        return self._observation(), reward, terminated, truncated, self._info(success)

    def render(self) -> np.ndarray:
        """The camera image (what the policy sees)."""
        table = self.render_table()
        if self.camera == "gripper":
            return render.gripper_view(table, self.state.ee)
        return table

    def render_table(self) -> np.ndarray:
        """The whole table from above, whatever the camera."""
        if self.state is None:
            raise RuntimeError("call reset() before render()")
        return render.render_frame(self._static, self.state)

    # ---------------------------------------------------------------- helpers

    def _observation(self) -> dict[str, Any]:
        return {"image": self.render(), "instruction": self.task.instruction}

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        if success is None:
            success = world.is_success(self.state, self.task)
        return {
            "success": bool(success),
            "task": self.task,
            "steps": self._steps,
            "grasping": self.state.held >= 0,
        }
