"""Visual questions, answers and captions about toy-world scenes (ground truth from the state).

Every question is unambiguous for its scene (e.g. "what color is the star?" is only asked when
there is exactly one star), and answers list every acceptable short form ("3", "three").
Positions use image thirds: rows top/middle/bottom, columns left/center/right.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rt2_jax.sim import vocabulary, world

QUESTION_TYPES = (*vocabulary.VQA_TEMPLATES, "locate", "locate_pair")
LOCATE_TYPES = ("locate", "locate_pair")   # answers are points, scored by location_correct
RELATION_MARGIN = 0.08      # x gap below which left-of/right-of is not asked
LOCATION_BINS = 256         # a point is two integers 0..255 (x from the left, y from the top)
# A pointing answer is correct when it lands within this distance (table units) of the centre:
# on the object (OBJECT_RADIUS) or, for a card, inside a circle of the card's half side.
POINT_TOLERANCE = world.OBJECT_RADIUS


@dataclasses.dataclass(frozen=True)
class QA:
    question: str
    answers: tuple[str, ...]
    question_type: str


# Where a covered card's object sits (cover_prob): within this share of the place tolerance of
# the card's centre, and at these heights when held over it (a place's release and carry
# heights; resting, the open gripper hovers 0.06-0.2 above it, as after a release).
_COVER_SPREAD = 0.5
_COVER_HELD_Z = (0.06, 0.3)
_COVER_HOVER_Z = (0.06, 0.2)


def sample_vqa_scene(rng: np.random.Generator, held_out: world.HeldOut = world.DEFAULT_HELD_OUT,
                     held_out_prob: float = 0.5, card_half: float = world.CARD_HALF,
                     cover_prob: float = 0.0) -> world.WorldState:
    """A static scene from the whole world, gripper out of the way; cards of half side
    `card_half` (the robot scenes' size, so web data shows the cards robot episodes do).

    With probability `held_out_prob` it shows a held-out object, and with half that probability
    it is on a held-out background (besides the backgrounds' uniform share), so the VQA and
    caption data name those concepts often. With probability `cover_prob` a scene with a card
    has an object over one of its cards: resting on it with the open gripper above (as a place
    leaves it), or held over it by the closed gripper (as a place carries and lowers it). The
    card is then partly hidden, as it is in those frames of a robot episode; objects otherwise
    never touch a card. `cover_prob` = 0 makes no extra random draw (scenes as before).
    """
    if not 0 <= cover_prob <= 1:
        raise ValueError(f"cover_prob must be in [0, 1], got {cover_prob}")
    num_objects = int(rng.integers(2, 7))
    chosen: list[str] = []
    if held_out.objects and rng.random() < held_out_prob:
        chosen.append(held_out.objects[int(rng.integers(len(held_out.objects)))])
    while len(chosen) < num_objects:
        name = world.ALL_OBJECTS[int(rng.integers(len(world.ALL_OBJECTS)))]
        if name not in chosen:
            chosen.append(name)
    chosen = [chosen[k] for k in rng.permutation(len(chosen))]
    num_cards = int(rng.integers(0, 3))
    symbols = [str(s) for s in rng.choice(vocabulary.CARD_SYMBOLS, num_cards, replace=False)]
    if held_out.backgrounds and rng.random() < held_out_prob / 2:
        background = _pick(rng, held_out.backgrounds)
    else:
        background = _pick(rng, vocabulary.BACKGROUNDS)
    state = world.build_scene(rng, chosen, symbols, background, card_half=card_half)
    state.ee = np.array([*_free_spot(rng, state), rng.uniform(0.15, world.Z_MAX)])
    if cover_prob > 0 and symbols and rng.random() < cover_prob:
        _cover_a_card(state, rng)
    return state


def _cover_a_card(state: world.WorldState, rng: np.random.Generator) -> None:
    """Moves a random object over a random card of `state` (see sample_vqa_scene). Other objects
    keep their distance from every card (world._layout), so the moved one overlaps none."""
    k = int(rng.integers(len(state.obj_xy)))
    c = int(rng.integers(len(state.card_xy)))
    reach = _COVER_SPREAD * (state.card_half - world.ON_CARD_MARGIN)
    xy = state.card_xy[c] + rng.uniform(-reach, reach, size=2)
    state.obj_xy[k] = xy
    if rng.random() < 0.5:      # resting on the card, the open gripper above it
        state.obj_z[k] = 0.0
        state.ee = np.array([*xy, rng.uniform(*_COVER_HOVER_Z)])
        state.gripper_closed, state.held = False, -1
    else:                       # held over the card
        z = rng.uniform(*_COVER_HELD_Z)
        state.obj_z[k] = z
        state.ee = np.array([*xy, z])
        state.gripper_closed, state.held = True, k


def covering_pairs(state: world.WorldState) -> list[tuple[int, int]]:
    """(object, card) index pairs of `state` whose object's centre is over the card (within its
    place tolerance per axis, at any height)."""
    tolerance = state.card_half - world.ON_CARD_MARGIN
    return [(k, c) for k in range(len(state.obj_xy)) for c in range(len(state.card_xy))
            if bool(np.all(np.abs(state.obj_xy[k] - state.card_xy[c]) <= tolerance))]


def _free_spot(rng: np.random.Generator, state: world.WorldState) -> np.ndarray:
    """Somewhere for the gripper that hides no object (the farthest of a few random tries)."""
    spots = rng.uniform(0.05, 0.95, size=(16, 2))
    gaps = np.linalg.norm(spots[:, None] - state.obj_xy[None], axis=-1).min(axis=1)
    return spots[int(np.argmax(gaps))]


def with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def position_name(xy) -> str:
    col = min(int(xy[0] * 3), 2)
    row = 2 - min(int(xy[1] * 3), 2)
    return vocabulary.POSITIONS[row * 3 + col]


def _count_answers(n: int) -> tuple[str, ...]:
    return (str(n), vocabulary.NUMBER_WORDS[n]) if n < len(vocabulary.NUMBER_WORDS) else (str(n),)


def _symbol_answers(symbol: str) -> tuple[str, ...]:
    if symbol.isdigit():
        return (symbol, vocabulary.NUMBER_WORDS[int(symbol)], f"the number {symbol}")
    return (symbol, with_article(symbol))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def candidate_questions(state: world.WorldState, rng: np.random.Generator,
                        focus: str | None = None) -> list[QA]:
    """One question of every type that is well defined for this scene.

    `focus` (an object in the scene) is the subject of the existence and position questions.
    """
    t = vocabulary.VQA_TEMPLATES
    names = state.names
    out: list[QA] = []
    unique_shapes = [s for s in set(state.shapes) if state.shapes.count(s) == 1]
    if unique_shapes:
        shape = _pick(rng, sorted(unique_shapes))
        color = state.colors[state.shapes.index(shape)]
        out.append(QA(_pick(rng, t["color"]).format(shape=shape), (color,), "color"))
    unique_colors = [c for c in set(state.colors) if state.colors.count(c) == 1]
    if unique_colors:
        color = _pick(rng, sorted(unique_colors))
        shape = state.shapes[state.colors.index(color)]
        answers = (shape, with_article(shape), f"{color} {shape}")
        out.append(QA(_pick(rng, t["shape"]).format(color=color), answers, "shape"))
    if focus is not None:
        asked = focus
    else:
        asked = _pick(rng, names) if rng.random() < 0.5 else _pick(rng, world.ALL_OBJECTS)
    out.append(QA(_pick(rng, t["exists"]).format(a_obj=with_article(asked)),
                  ("yes",) if asked in names else ("no",), "exists"))
    out.append(_count_question(state, rng))
    i = names.index(focus) if focus is not None else int(rng.integers(len(names)))
    out.append(QA(_pick(rng, t["position"]).format(obj=names[i]),
                  (position_name(state.obj_xy[i]),), "position"))
    relation = _relation_question(state, rng)
    if relation:
        out.append(relation)
    card = _card_question(state, rng)
    if card:
        out.append(card)
    out.append(QA(_pick(rng, t["background"]),
                  (state.background, f"{state.background} table"), "background"))
    return out


def _count_question(state: world.WorldState, rng: np.random.Generator) -> QA:
    templates = vocabulary.VQA_TEMPLATES["count"]
    k = int(rng.integers(len(templates)))
    template = templates[k]
    if "{shapes}" in template:
        shape = _pick(rng, vocabulary.SHAPES)
        return QA(template.format(shapes=shape + "s"), _count_answers(state.shapes.count(shape)),
                  "count")
    if "{color}" in template:
        color = _pick(rng, vocabulary.COLORS)
        return QA(template.format(color=color), _count_answers(state.colors.count(color)),
                  "count")
    n = len(state.card_symbols) if "cards" in template else len(state.names)
    return QA(template, _count_answers(n), "count")


def _relation_question(state: world.WorldState, rng: np.random.Generator) -> QA | None:
    pairs = [(i, j) for i in range(len(state.names)) for j in range(len(state.names))
             if i != j and abs(state.obj_xy[i, 0] - state.obj_xy[j, 0]) > RELATION_MARGIN]
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    left = bool(state.obj_xy[i, 0] < state.obj_xy[j, 0])
    template = _pick(rng, vocabulary.VQA_TEMPLATES["relation"])
    question = template.format(obj=state.names[i], obj2=state.names[j])
    if "left or" in template:
        answers = ("left", "to the left") if left else ("right", "to the right")
    elif "left of" in template:
        answers = ("yes",) if left else ("no",)
    else:
        answers = ("no",) if left else ("yes",)
    return QA(question, answers, "relation")


def _card_question(state: world.WorldState, rng: np.random.Generator) -> QA | None:
    templates = vocabulary.VQA_TEMPLATES["card"]
    symbols = state.card_symbols
    if len(symbols) == 1:
        if symbols[0].isdigit() and rng.random() < 0.5:
            return QA(templates[1], _symbol_answers(symbols[0]), "card")
        return QA(templates[0], _symbol_answers(symbols[0]), "card")
    if len(symbols) == 2 and abs(state.card_xy[0, 0] - state.card_xy[1, 0]) > RELATION_MARGIN:
        left_first = state.card_xy[0, 0] < state.card_xy[1, 0]
        side = _pick(rng, ("left", "right"))
        k = (0 if left_first else 1) if side == "left" else (1 if left_first else 0)
        return QA(templates[2].format(side=side), _symbol_answers(symbols[k]), "card")
    return None


def sample_questions(state: world.WorldState, rng: np.random.Generator, n: int,
                     held_out: world.HeldOut = world.DEFAULT_HELD_OUT) -> list[QA]:
    """Up to n questions of distinct types, in random order.

    When a held-out object is in the scene, half the time it is the subject of the existence
    and position questions, so the VQA data names the concepts robot episodes never show.
    """
    present = [name for name in state.names if name in held_out.objects]
    focus = present[0] if present and rng.random() < 0.5 else None
    candidates = candidate_questions(state, rng, focus)
    order = rng.permutation(len(candidates))
    return [candidates[k] for k in order[:n]]


def _listing(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(state: world.WorldState, rng: np.random.Generator) -> str:
    """One sentence naming every object left to right, the table and the cards."""
    order = np.argsort(state.obj_xy[:, 0])
    objects = _listing([with_article(state.names[k]) for k in order])
    text = _pick(rng, vocabulary.CAPTION_TEMPLATES).format(objects=objects,
                                                          background=state.background)
    if state.card_symbols:
        cards = _listing(sorted(state.card_symbols))
        templates = (vocabulary.CAPTION_ONE_CARD_TEMPLATES if len(state.card_symbols) == 1
                     else vocabulary.CAPTION_CARDS_TEMPLATES)
        text += _pick(rng, templates).format(cards=cards)
    return text


# ---------------------------------------------------------------- pointing (localization)


def location_answer(*points) -> str:
    """Table points (x right, y up, in [0, 1]) -> "x y" per point, space-separated
    ("x1 y1 x2 y2" for two): LOCATION_BINS-grid image coordinates, x from the left, y from the
    top."""
    if not points:
        raise ValueError("location_answer needs at least one point")
    out = []
    for xy in points:
        col = min(int(float(xy[0]) * LOCATION_BINS), LOCATION_BINS - 1)
        row = min(int((1.0 - float(xy[1])) * LOCATION_BINS), LOCATION_BINS - 1)
        out.append(f"{max(col, 0)} {max(row, 0)}")
    return " ".join(out)


def parse_locations(text: str) -> np.ndarray | None:
    """"x1 y1 [x2 y2 ...]" -> float64 [n, 2] table points at the centres of those grid cells,
    or None when `text` is not a non-empty, even count of integers in 0..LOCATION_BINS-1 (a
    malformed answer scores as wrong, it never raises)."""
    parts = text.strip().split()
    if not parts or len(parts) % 2 or not all(p.isdigit() for p in parts):
        return None
    values = np.array([int(p) for p in parts], np.float64).reshape(-1, 2)
    if (values >= LOCATION_BINS).any():
        return None
    return np.stack([(values[:, 0] + 0.5) / LOCATION_BINS,
                     1.0 - (values[:, 1] + 0.5) / LOCATION_BINS], -1)


def parse_location(text: str) -> np.ndarray | None:
    """"x y" -> the table point at the centre of that grid cell, or None when `text` is not two
    integers in 0..LOCATION_BINS-1 (a malformed answer scores as wrong, it never raises)."""
    points = parse_locations(text)
    return None if points is None or len(points) != 1 else points[0]


def location_correct(text: str, answer: str, tolerance: float = POINT_TOLERANCE) -> bool:
    """Whether the predicted points `text` land within `tolerance` of the reference `answer`'s,
    each of them, in order (a one-point answer: "x y"; two: "x1 y1 x2 y2"); a prediction with
    another number of points is wrong."""
    predicted, reference = parse_locations(text), parse_locations(answer)
    if reference is None:
        raise ValueError(f"reference location {answer!r} is not 'x y' pairs of integers 0..255")
    if predicted is None or predicted.shape != reference.shape:
        return False
    return bool((np.linalg.norm(predicted - reference, axis=-1) <= tolerance).all())


def locate_questions(state: world.WorldState, rng: np.random.Generator, n: int,
                     held_out: world.HeldOut = world.DEFAULT_HELD_OUT) -> list[QA]:
    """Up to n pointing questions about distinct objects, cards and the gripper of the scene;
    held-out objects and symbols present are asked first, so web data grounds what robot data
    lacks. The gripper (its x, y; the answer ignores its height) is what every action is
    relative to."""
    t = vocabulary.LOCATE_TEMPLATES
    subjects = [("object", name, state.obj_xy[k]) for k, name in enumerate(state.names)]
    subjects += [("card", symbol, state.card_xy[k])
                 for k, symbol in enumerate(state.card_symbols)]
    subjects.append(("gripper", "gripper", state.ee[:2]))
    order = list(rng.permutation(len(subjects)))
    held = set(held_out.objects) | set(held_out.symbols)
    order.sort(key=lambda k: subjects[k][1] not in held)   # stable: held-out first
    out = []
    for k in order[:n]:
        kind, name, xy = subjects[k]
        template = _pick(rng, t[kind])
        question = template.format(obj=name, symbol=name)
        out.append(QA(question, (location_answer(xy),), "locate"))
    return out


def locate_pair_questions(state: world.WorldState, rng: np.random.Generator,
                          n: int) -> list[QA]:
    """Up to n questions naming an object and a card of the scene ("point to the red block and
    the card showing 3"), answered by both points in the order named: "x1 y1 x2 y2". The pairs
    are drawn uniformly, held-out things at the rate the scenes show them: asked first, as
    the one-point questions ask them, they crowded out the seen cards that place episodes
    name (a keypoint trained that way found held-out symbol cards and missed seen ones). None
    when the scene has no card (and no random draw at all for n = 0, so data made without
    these questions is unchanged). A pair whose object is over its card is asked first."""
    if n <= 0 or not state.card_symbols:
        return []
    pairs = [(k, c) for k in range(len(state.names)) for c in range(len(state.card_symbols))]
    order = list(rng.permutation(len(pairs)))
    # An object over a card (cover_prob scenes) is asked with that card first: the pair a place
    # names in its last frames, when the object hides the card.
    covering = set(covering_pairs(state))
    order.sort(key=lambda i: pairs[i] not in covering)   # stable
    out = []
    for i in order[:n]:
        k, c = pairs[i]
        template = _pick(rng, vocabulary.LOCATE_PAIR_TEMPLATES)
        question = template.format(obj=state.names[k], symbol=state.card_symbols[c])
        out.append(QA(question, (location_answer(state.obj_xy[k], state.card_xy[c]),),
                      "locate_pair"))
    return out
