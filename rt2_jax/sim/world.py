"""State, tasks and dynamics of the toy tabletop world (numpy only, no rendering).

Coordinates are in table units: the table is the square [0, 1] x [0, 1] seen from above, x grows
to the right of the image and y grows towards its top (so "up" means towards the top of the
image); z is the end effector's height above the table, in [0, Z_MAX].

Actions are RT-2's 8 dims `terminate, dx, dy, dz, droll, dpitch, dyaw, gripper` in world units.
Each dim is clipped to [ACTION_LOW, ACTION_HIGH] before it acts; rotations are accepted and ignored
(the world is planar); gripper is a closedness in [0, 1] where > 0.5 means closed.

(Over 400 lines: the world's vocabulary, geometry, physics and task success rules are one
definition that the renderer, expert and datasets all read.)
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from rt2_jax.sim import vocabulary

# ---- geometry (table units) ----
OBJECT_RADIUS = 0.065
CARD_HALF = 0.07           # cards are squares of side 2 * CARD_HALF
EE_RADIUS = 0.03           # footprint of the closed gripper when it pushes
Z_MAX = 0.4
GRASP_Z = 0.05             # closing at or below this height grasps an object ...
GRASP_RADIUS = 0.075       # ... whose centre is this close to the gripper's centre (the gripper
                           # is over the object's body: objects are >= 0.18 apart, so unambiguous)
START_Z = 0.2              # the gripper's height at the start of an episode
PUSH_Z = 0.05              # a closed, empty gripper at or below this height pushes objects
PUSH_CONTACT = EE_RADIUS + OBJECT_RADIUS

# ---- success thresholds ----
LIFT_Z = 0.2               # pick: the object is held at least this high
NEAR_DIST = 0.18           # move near: centres at most this far apart
PUSH_DIST = 0.15           # push: displaced at least this far along the direction
ON_CARD_MARGIN = 0.01     # place: the object's centre at least this far inside the card ...
ON_CARD_TOLERANCE = CARD_HALF - ON_CARD_MARGIN   # ... per axis (default cards)

# ---- scenes ----
OBJECTS_PER_SCENE = (3, 5)  # robot episodes: objects on the table (task object(s) included)

# ---- actions ----
ACTION_DIM = 8
ACTION_NAMES = ("terminate", "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
MAX_STEP_XY = 0.1          # per step, 1/10 of the table width
MAX_STEP_Z = 0.1
MAX_ROTATION = 0.25        # radians per step; accepted and ignored
ACTION_LOW = np.array(
    [0.0, -MAX_STEP_XY, -MAX_STEP_XY, -MAX_STEP_Z, -MAX_ROTATION, -MAX_ROTATION, -MAX_ROTATION,
     0.0], dtype=np.float32)
ACTION_HIGH = np.array(
    [1.0, MAX_STEP_XY, MAX_STEP_XY, MAX_STEP_Z, MAX_ROTATION, MAX_ROTATION, MAX_ROTATION, 1.0],
    dtype=np.float32)

TASK_KINDS = tuple(vocabulary.TASK_TEMPLATES)
DIRECTION_VECTORS = {
    "left": np.array([-1.0, 0.0]), "right": np.array([1.0, 0.0]),
    "up": np.array([0.0, 1.0]), "down": np.array([0.0, -1.0]),
}
ALL_OBJECTS = tuple(f"{c} {s}" for c, s in itertools.product(vocabulary.COLORS, vocabulary.SHAPES))


def parse_object(name: str) -> tuple[str, str]:
    """'red block' -> ('red', 'block'), with an error naming the accepted words."""
    parts = name.split()
    if len(parts) != 2 or parts[0] not in vocabulary.COLORS or parts[1] not in vocabulary.SHAPES:
        raise ValueError(f"object name {name!r} must be '<color> <shape>' with color in "
                         f"{vocabulary.COLORS} and shape in {vocabulary.SHAPES}")
    return parts[0], parts[1]


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Concepts kept out of robot episodes but shown in VQA data (RT-2's transfer experiment).

    Held-out card symbols never appear on any card of a robot episode (nor in its instruction);
    they appear on cards in VQA and caption scenes only (RT-2's "symbol understanding").
    """

    objects: tuple[str, ...] = ("purple star", "orange ring", "green triangle")
    backgrounds: tuple[str, ...] = ("marble",)
    symbols: tuple[str, ...] = ("7", "moon")

    def __post_init__(self):
        for name in self.objects:
            parse_object(name)
        for background in self.backgrounds:
            if background not in vocabulary.BACKGROUNDS:
                raise ValueError(f"held-out background {background!r} is not one of "
                                 f"{vocabulary.BACKGROUNDS}")
        for symbol in self.symbols:
            if symbol not in vocabulary.CARD_SYMBOLS:
                raise ValueError(f"held-out symbol {symbol!r} is not one of "
                                 f"{vocabulary.CARD_SYMBOLS}")
        symbols_left = set(vocabulary.CARD_SYMBOLS) - set(self.symbols)
        if set(self.objects) >= set(ALL_OBJECTS) or set(self.backgrounds) >= set(
                vocabulary.BACKGROUNDS) or len(symbols_left) < 3:
            raise ValueError("HeldOut must leave some objects, backgrounds and at least 3 card "
                             "symbols for robot episodes")


DEFAULT_HELD_OUT = HeldOut()


@dataclasses.dataclass(frozen=True)
class Task:
    """What to do. `obj`/`target` are object names like 'red block'."""

    kind: str
    obj: str
    target: str | None = None        # move_near
    direction: str | None = None     # push
    symbol: str | None = None        # place_on_card
    instruction: str = ""            # filled from TASK_TEMPLATES when empty

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task kind {self.kind!r} is not one of {TASK_KINDS}")
        parse_object(self.obj)
        needs = {"move_near": "target", "push": "direction", "place_on_card": "symbol"}
        field = needs.get(self.kind)
        if field and getattr(self, field) is None:
            raise ValueError(f"a {self.kind!r} task needs `{field}`")
        if self.target is not None:
            parse_object(self.target)
            if self.target == self.obj:
                raise ValueError(f"move_near target must differ from the object ({self.obj!r})")
        if self.direction is not None and self.direction not in DIRECTION_VECTORS:
            raise ValueError(f"direction {self.direction!r} is not one of {vocabulary.DIRECTIONS}")
        if self.symbol is not None and self.symbol not in vocabulary.CARD_SYMBOLS:
            raise ValueError(f"card symbol {self.symbol!r} is not one of {vocabulary.CARD_SYMBOLS}")


@dataclasses.dataclass
class WorldState:
    """Everything that changes or is drawn; arrays are indexed by object / card."""

    background: str
    texture_seed: int
    colors: list[str]
    shapes: list[str]
    obj_xy: np.ndarray          # (N, 2) float64
    obj_z: np.ndarray           # (N,)
    card_symbols: list[str]
    card_xy: np.ndarray         # (M, 2)
    ee: np.ndarray              # (3,) x, y, z
    gripper_closed: bool = False
    held: int = -1              # index of the grasped object, -1 if none
    obj_start_xy: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))
    card_half: float = CARD_HALF    # half the side of this scene's cards (check_card_half)

    @property
    def names(self) -> list[str]:
        return [f"{c} {s}" for c, s in zip(self.colors, self.shapes, strict=True)]

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"object {name!r} is not in the scene {self.names}") from None

    def card_index(self, symbol: str) -> int:
        try:
            return self.card_symbols.index(symbol)
        except ValueError:
            raise ValueError(f"no card shows {symbol!r} (cards: {self.card_symbols})") from None


# ---------------------------------------------------------------- scene sampling


# What a scene may show, per evaluation category (RT-2's seen / unseen objects / unseen
# backgrounds / symbol understanding). 'unseen' is kept as another name for 'unseen_objects'.
CONCEPTS = ("seen", "unseen_objects", "unseen_backgrounds", "symbols", "unseen", "all")
EVAL_CATEGORIES = ("seen", "unseen_objects", "unseen_backgrounds", "symbols")


def check_concepts(concepts: str, held_out: HeldOut) -> str:
    """Validates `concepts` against CONCEPTS and `held_out`; returns its canonical name."""
    if concepts not in CONCEPTS:
        raise ValueError(f"concepts={concepts!r} must be one of {CONCEPTS}")
    concepts = "unseen_objects" if concepts == "unseen" else concepts
    needs = {"unseen_objects": "objects", "unseen_backgrounds": "backgrounds",
             "symbols": "symbols"}.get(concepts)
    if needs and not getattr(held_out, needs):
        raise ValueError(f"concepts={concepts!r} needs held-out {needs}; HeldOut.{needs} is empty")
    return concepts


def object_pool(held_out: HeldOut, concepts: str) -> tuple[list[str], list[str]]:
    """(objects, backgrounds) a scene of this category may draw from (objects other than the
    task's own; the task's object is drawn by sample_task)."""
    concepts = check_concepts(concepts, held_out)
    if concepts == "all":
        return list(ALL_OBJECTS), list(vocabulary.BACKGROUNDS)
    objects = [o for o in ALL_OBJECTS if o not in held_out.objects]
    if concepts == "unseen_backgrounds":
        return objects, list(held_out.backgrounds)
    return objects, [b for b in vocabulary.BACKGROUNDS if b not in held_out.backgrounds]


def symbol_pool(held_out: HeldOut, concepts: str) -> list[str]:
    """Card symbols a scene of this category may show besides the task's own."""
    if check_concepts(concepts, held_out) == "all":
        return list(vocabulary.CARD_SYMBOLS)
    return [s for s in vocabulary.CARD_SYMBOLS if s not in held_out.symbols]


def _choose(rng: np.random.Generator, items, exclude=()):
    pool = [item for item in items if item not in exclude]
    return pool[int(rng.integers(len(pool)))]


def sample_task(rng: np.random.Generator, kind: str | None = None, *,
                held_out: HeldOut = DEFAULT_HELD_OUT, concepts: str = "seen") -> Task:
    """A random task (instruction left empty) of the category `concepts`: under
    'unseen_objects' its object is a held-out one; under 'symbols' it is a place_on_card task
    naming a held-out symbol; otherwise everything it names is seen (or anything, for 'all')."""
    concepts = check_concepts(concepts, held_out)
    if concepts == "symbols":
        if kind not in (None, "place_on_card"):
            raise ValueError(f"concepts='symbols' tasks are place_on_card, not {kind!r}")
        kind = "place_on_card"
    kind = kind or TASK_KINDS[int(rng.integers(len(TASK_KINDS)))]
    objects, _ = object_pool(held_out, concepts)
    obj = _choose(rng, held_out.objects if concepts == "unseen_objects" else objects)
    target = direction = symbol = None
    if kind == "move_near":
        target = _choose(rng, objects, exclude=(obj,))
    elif kind == "push":
        direction = _choose(rng, vocabulary.DIRECTIONS)
    elif kind == "place_on_card":
        symbol = _choose(rng, held_out.symbols if concepts == "symbols"
                         else symbol_pool(held_out, concepts))
    return Task(kind=kind, obj=obj, target=target, direction=direction, symbol=symbol)


def instruction_for(task: Task, rng: np.random.Generator) -> str:
    templates = vocabulary.TASK_TEMPLATES[task.kind]
    if task.kind == "place_on_card" and not task.symbol.isdigit():
        templates = [t for t in templates if "number" not in t]
    template = templates[int(rng.integers(len(templates)))]
    return template.format(obj=task.obj, target=task.target, direction=task.direction,
                           symbol=task.symbol)


def _box_for_main(task: Task | None) -> tuple[np.ndarray, np.ndarray]:
    """Where the task's object may start so that the expert can always solve the task."""
    low, high = np.array([0.12, 0.12]), np.array([0.88, 0.88])
    if task is not None and task.kind == "push":
        axis = 0 if task.direction in ("left", "right") else 1
        if DIRECTION_VECTORS[task.direction][axis] > 0:
            low[axis], high[axis] = 0.18, 0.55
        else:
            low[axis], high[axis] = 0.45, 0.82
    return low, high


def _far_from(point: np.ndarray, others: list[np.ndarray], min_dist: float) -> bool:
    return all(np.linalg.norm(point - other) >= min_dist for other in others)


# Card sizes a scene may have (half a side, table units). The default cards are about as wide as
# an object, so an object held over one, or set down on it, hides most of it (its symbol
# included); cards of half side 0.11 still show a ring around a held object.
MIN_CARD_HALF, MAX_CARD_HALF = CARD_HALF, 0.12


def check_card_half(card_half: float) -> float:
    """`card_half` if it is in [MIN_CARD_HALF, MAX_CARD_HALF], else a ValueError naming it."""
    if not MIN_CARD_HALF <= card_half <= MAX_CARD_HALF:
        raise ValueError(f"card_half (half a card's side) must be in [{MIN_CARD_HALF}, "
                         f"{MAX_CARD_HALF}] table units, got {card_half}")
    return float(card_half)


MAX_GRID = 0.2   # coarsest scene grid (table units): coarser leaves too few spots for a scene


def check_grid(grid: float) -> float:
    """`grid` if it is 0 (off) or a pitch in (0, MAX_GRID], else a ValueError naming it."""
    if not 0 <= grid <= MAX_GRID:
        raise ValueError(f"grid must be 0 (off) or a pitch in (0, {MAX_GRID}] table units, "
                         f"got {grid}")
    return float(grid)


def _snap(p: np.ndarray, low, high, grid: float) -> np.ndarray:
    """p rounded to the nearest multiple of `grid` inside [low, high] (p itself if grid = 0)."""
    if not grid:
        return p
    lo = np.ceil(np.asarray(low) / grid - 1e-9) * grid
    hi = np.floor(np.asarray(high) / grid + 1e-9) * grid
    return np.clip(np.round(p / grid) * grid, lo, hi)


def _layout(rng: np.random.Generator, num_objects: int, num_cards: int, task: Task | None,
            grid: float = 0.0, card_half: float = CARD_HALF,
            ) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Object and card centres without overlaps, or None when rejection sampling gives up."""
    obj_xy: list[np.ndarray] = []
    low, high = _box_for_main(task)
    for i in range(num_objects):
        if i > 0:
            low, high = np.array([0.1, 0.1]), np.array([0.9, 0.9])
        for _ in range(100):
            p = _snap(rng.uniform(low, high), low, high, grid)
            if not _far_from(p, obj_xy, 2 * OBJECT_RADIUS + 0.05):
                continue
            if i == 1 and task is not None and task.kind == "move_near" and \
                    np.linalg.norm(p - obj_xy[0]) < NEAR_DIST + 0.12:
                continue
            obj_xy.append(p)
            break
        else:
            return None
    card_xy: list[np.ndarray] = []
    for _ in range(num_cards):
        for _ in range(100):
            p = _snap(rng.uniform(0.1, 0.9, size=2), 0.1, 0.9, grid)
            if _far_from(p, obj_xy, card_half * 1.45 + OBJECT_RADIUS) and \
                    _far_from(p, card_xy, 2 * card_half * 1.45):
                card_xy.append(p)
                break
        else:
            return None
    return obj_xy, card_xy


def build_scene(rng: np.random.Generator, objects: list[str], symbols: list[str],
                background: str, task: Task | None = None, grid: float = 0.0,
                card_half: float = CARD_HALF) -> WorldState:
    """Places `objects` (first = the task's object) and cards showing `symbols` at random;
    with `grid` > 0 they and the gripper's start sit on multiples of `grid`. Cards are squares
    of side 2 * `card_half`."""
    card_half = check_card_half(card_half)
    for _ in range(200):
        layout = _layout(rng, len(objects), len(symbols), task, grid, card_half)
        if layout is not None:
            break
    else:
        raise RuntimeError(f"could not place {len(objects)} objects and {len(symbols)} cards on "
                           "the table; use fewer")
    obj_xy = np.array(layout[0], dtype=np.float64).reshape(-1, 2)
    colors, shapes = zip(*(parse_object(o) for o in objects), strict=True)
    return WorldState(
        background=background,
        texture_seed=int(rng.integers(2**31)),
        colors=list(colors), shapes=list(shapes),
        obj_xy=obj_xy, obj_z=np.zeros(len(objects)),
        card_symbols=list(symbols),
        card_xy=np.array(layout[1], dtype=np.float64).reshape(-1, 2),
        ee=np.array([*_snap(rng.uniform(0.15, 0.85, size=2), 0.15, 0.85, grid), START_Z]),
        obj_start_xy=obj_xy.copy(),
        card_half=card_half,
    )


def sample_episode(rng: np.random.Generator, task: Task | str | None = None, *,
                   held_out: HeldOut = DEFAULT_HELD_OUT, concepts: str = "seen",
                   grid: float = 0.0, card_half: float = CARD_HALF) -> tuple[WorldState, Task]:
    """A scene and task for a robot episode. `task` may be a Task, a task kind or None.
    `grid` > 0 puts objects, cards and the gripper's start on multiples of it (see TabletopEnv);
    cards are squares of side 2 * `card_half`.

    Under every category but 'all', distractor objects and cards are seen ones: only what the
    category tests is new (the task's object, the background or the task's card symbol).
    Under 'seen' a given Task must not name a held-out concept.
    """
    concepts = check_concepts(concepts, held_out)
    if task is None or isinstance(task, str):
        task = sample_task(rng, task, held_out=held_out, concepts=concepts)
    objects, backgrounds = object_pool(held_out, concepts)
    if concepts == "seen":
        for name in (task.obj, task.target):
            if name in held_out.objects:
                raise ValueError(f"{name!r} is held out of robot episodes; use concepts='all' "
                                 "or another HeldOut to ask for it")
        if task.symbol in held_out.symbols:
            raise ValueError(f"card symbol {task.symbol!r} is held out of robot episodes; use "
                             "concepts='symbols' or 'all'")
    chosen = [task.obj] + ([task.target] if task.target else [])
    used_shapes_colors = set(chosen)
    num_objects = int(rng.integers(OBJECTS_PER_SCENE[0], OBJECTS_PER_SCENE[1] + 1))
    while len(chosen) < num_objects:
        name = _choose(rng, objects, exclude=used_shapes_colors)
        chosen.append(name)
        used_shapes_colors.add(name)
    symbols: list[str] = []
    if task.kind == "place_on_card":
        symbols = [task.symbol]
        num_cards = int(rng.integers(2, 4))
    else:
        num_cards = int(rng.integers(0, 3))
    pool = symbol_pool(held_out, concepts)
    while len(symbols) < num_cards:
        symbols.append(_choose(rng, pool, exclude=symbols))
    background = _choose(rng, backgrounds)
    state = build_scene(rng, chosen, symbols, background, task, grid, card_half)
    if not task.instruction:
        task = dataclasses.replace(task, instruction=instruction_for(task, rng))
    return state, task


# ---------------------------------------------------------------- dynamics


def clip_action(action) -> np.ndarray:
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
        raise ValueError(f"action must be {ACTION_DIM} finite numbers ({', '.join(ACTION_NAMES)}),"
                         f" got {action!r}")
    return np.clip(action, ACTION_LOW, ACTION_HIGH)


def _push_objects(state: WorldState, motion_xy: np.ndarray) -> None:
    """Moves every resting object that overlaps the closed gripper out along the contact normal."""
    for i in range(len(state.obj_xy)):
        if i == state.held or state.obj_z[i] > 0:
            continue
        offset = state.obj_xy[i] - state.ee[:2]
        dist = float(np.linalg.norm(offset))
        if dist >= PUSH_CONTACT:
            continue
        if dist < 1e-9:
            norm = float(np.linalg.norm(motion_xy))
            offset, dist = (motion_xy, norm) if norm > 0 else (np.array([1.0, 0.0]), 1.0)
        state.obj_xy[i] = state.ee[:2] + offset / dist * PUSH_CONTACT
        state.obj_xy[i] = np.clip(state.obj_xy[i], OBJECT_RADIUS, 1 - OBJECT_RADIUS)


def apply_action(state: WorldState, action) -> np.ndarray:
    """Advances `state` in place by one (clipped) action; returns the clipped action.

    Motion first (in sub-steps of at most 0.02 so pushes cannot tunnel), then the gripper:
    closing low over an object grasps it, opening drops what is held onto the table.
    """
    action = clip_action(action)
    motion = action[1:4]
    substeps = max(1, int(np.ceil(np.linalg.norm(motion[:2]) / 0.02)))
    for _ in range(substeps):
        state.ee = state.ee + motion / substeps
        state.ee[:2] = np.clip(state.ee[:2], 0.0, 1.0)
        state.ee[2] = np.clip(state.ee[2], 0.0, Z_MAX)
        if state.held >= 0:
            state.obj_xy[state.held] = np.clip(state.ee[:2], OBJECT_RADIUS, 1 - OBJECT_RADIUS)
            state.obj_z[state.held] = state.ee[2]
        elif state.gripper_closed and state.ee[2] <= PUSH_Z:
            _push_objects(state, motion[:2])
    close = action[7] > 0.5
    if close and not state.gripper_closed:
        state.gripper_closed = True
        if state.ee[2] <= GRASP_Z and len(state.obj_xy):
            dists = np.linalg.norm(state.obj_xy - state.ee[:2], axis=1)
            nearest = int(np.argmin(dists))
            if dists[nearest] <= GRASP_RADIUS:
                state.held = nearest
                state.obj_xy[nearest] = state.ee[:2].copy()
                state.obj_z[nearest] = state.ee[2]
    elif not close and state.gripper_closed:
        state.gripper_closed = False
        if state.held >= 0:
            state.obj_z[state.held] = 0.0
            state.held = -1
    return action


def is_success(state: WorldState, task: Task) -> bool:
    i = state.index_of(task.obj)
    resting = state.held != i and state.obj_z[i] == 0.0
    if task.kind == "pick":
        return state.held == i and state.ee[2] >= LIFT_Z
    if task.kind == "move_near":
        j = state.index_of(task.target)
        return resting and float(np.linalg.norm(state.obj_xy[i] - state.obj_xy[j])) <= NEAR_DIST
    if task.kind == "push":
        moved = state.obj_xy[i] - state.obj_start_xy[i]
        return resting and float(moved @ DIRECTION_VECTORS[task.direction]) >= PUSH_DIST
    card = state.card_xy[state.card_index(task.symbol)]
    tolerance = state.card_half - ON_CARD_MARGIN
    return resting and bool(np.all(np.abs(state.obj_xy[i] - card) <= tolerance))
