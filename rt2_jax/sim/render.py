"""Top-down RGB rendering of a WorldState with vectorized numpy (Pillow only for card glyphs).

`render_static` draws what does not move within an episode (table texture and cards) once;
`render_frame` copies it and draws shadows, objects and the gripper on small windows, so a frame
costs well under a millisecond. Lifted things are drawn larger (closer to the camera) with a
shadow on the table; the gripper's two fingers are far apart when open, together when closed.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from rt2_jax.sim import world

IMAGE_SIZE = 128
# Smallest image side the renderer draws: a card's symbol needs at least one pixel
# (2 * CARD_HALF * size - 4 >= 1), and at 40 px an object is still 5 px wide.
MIN_IMAGE_SIZE = 40
GRIPPER_VIEW = 2.0         # table widths a gripper camera shows: the whole table from anywhere

COLOR_RGB = {
    "red": (215, 40, 40), "green": (40, 175, 65), "blue": (45, 85, 225),
    "yellow": (240, 215, 40), "purple": (145, 60, 195), "orange": (250, 140, 30),
    "white": (248, 248, 248), "black": (25, 25, 25),
}
# The gripper is drawn in colours no object or table has (magenta body, cyan fingers) so a camera
# policy finds it and its open/closed state at a glance: grey on grey or checker tables took a
# small network several times more training to see (the gripper is not what the transfer test
# is about; objects, tables and card symbols are).
_GRIPPER_BODY = np.array((235, 30, 200))
_GRIPPER_FINGER = np.array((30, 235, 235))
# Closed, the body takes the fingers' colour: open and closed then differ over the whole gripper,
# not only by a few pixels of finger spread (which a small VLM did not pick up in 600 steps
# while it read the table's colour in under 100).
_GRIPPER_BODY_CLOSED = _GRIPPER_FINGER
_OUTLINE = np.array((30, 30, 30))
_LIFT_SCALE = 0.8          # drawn size grows by 1 + 0.8 z
_SHADOW_SHIFT = 0.5        # shadow offset per unit height (light from the top left): shows height


# ---------------------------------------------------------------- primitives


def _to_px(xy, size: int) -> tuple[float, float]:
    return float(xy[0]) * size, (1.0 - float(xy[1])) * size


def _window(size: int, cx: float, cy: float, half: float):
    """Slices of the image around (cx, cy) and the pixel-centre offsets (u right, v down)."""
    x0, x1 = max(int(cx - half) - 1, 0), min(int(cx + half) + 2, size)
    y0, y1 = max(int(cy - half) - 1, 0), min(int(cy + half) + 2, size)
    x1, y1 = max(x1, x0), max(y1, y0)   # wholly outside the image: an empty window
    v, u = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    return (slice(y0, y1), slice(x0, x1)), u - cx, v - cy


def _paint(img: np.ndarray, sl, mask: np.ndarray, color, alpha: float = 1.0) -> None:
    if not mask.any():
        return
    region = img[sl]
    color = np.asarray(color, dtype=np.float32)
    if alpha >= 1.0:
        region[mask] = color.astype(np.uint8)
    else:
        region[mask] = (region[mask] * (1 - alpha) + color * alpha).astype(np.uint8)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside `shape` of radius r (px) centred at u = v = 0 (v grows downwards)."""
    a, b = u / r, v / r
    if shape == "block":
        return np.maximum(np.abs(a), np.abs(b)) <= 0.82
    if shape == "ball":
        return a * a + b * b <= 1.0
    if shape == "triangle":   # apex up
        return (b <= 0.75) & (np.abs(a) <= (b + 1.0) * 0.6)
    if shape == "ring":
        d2 = a * a + b * b
        return (d2 <= 1.0) & (d2 >= 0.28)
    if shape == "star":       # five points, one pointing up
        theta = np.arctan2(a, -b)
        t = (theta * 5 / (2 * np.pi)) % 1.0
        spike = np.abs(t - 0.5) * 2          # 1 at a tip, 0 between tips
        return np.sqrt(a * a + b * b) <= 0.45 + 0.62 * spike ** 2
    if shape == "cylinder":   # an upright can seen slightly from the side: a tall rounded box
        body = (np.abs(a) <= 0.6) & (np.abs(b) <= 0.75)
        caps = (a / 0.6) ** 2 + ((np.abs(b) - 0.75) / 0.25) ** 2 <= 1.0
        return body | caps
    raise ValueError(f"unknown shape {shape!r}")


def _draw_object(img: np.ndarray, shape: str, color: str, xy, z: float) -> None:
    size = img.shape[0]
    cx, cy = _to_px(xy, size)
    r = world.OBJECT_RADIUS * size * (1 + _LIFT_SCALE * z)
    sl, u, v = _window(size, cx, cy, r * 1.1)
    outer = shape_mask(shape, u, v, r)
    inner = shape_mask(shape, u, v, r - 1.3)
    rgb = np.array(COLOR_RGB[color], dtype=np.float32)
    _paint(img, sl, outer, (90, 90, 90) if color == "black" else rgb * 0.45)
    _paint(img, sl, inner, rgb)
    if shape == "ball":
        a, b = u / r + 0.35, v / r + 0.35
        _paint(img, sl, inner & (a * a + b * b <= 0.09), (255, 255, 255), alpha=0.55)
    elif shape == "cylinder":
        a, b = u / r, (v / r + 0.75)
        _paint(img, sl, (a / 0.55) ** 2 + (b / 0.22) ** 2 <= 1.0, (255, 255, 255), alpha=0.35)


def _draw_shadow(img: np.ndarray, xy, z: float, radius: float, alpha: float = 0.35) -> None:
    size = img.shape[0]
    cx, cy = _to_px((xy[0] + _SHADOW_SHIFT * z, xy[1] - _SHADOW_SHIFT * z), size)
    r = radius * size
    sl, u, v = _window(size, cx, cy, r)
    _paint(img, sl, u * u + v * v <= r * r, (0, 0, 0), alpha=alpha)


def _draw_gripper(img: np.ndarray, ee, closed: bool) -> None:
    size = img.shape[0]
    scale = size * (1 + _LIFT_SCALE * float(ee[2]))
    cx, cy = _to_px(ee, size)
    spread = (0.045 if closed else 0.085) * scale
    sl, u, v = _window(size, cx, cy, spread + 0.02 * scale)
    bar = (np.abs(u) <= spread) & (np.abs(v) <= 0.009 * scale)
    hub = u * u + v * v <= (0.026 * scale) ** 2
    _paint(img, sl, bar | hub, _GRIPPER_BODY_CLOSED if closed else _GRIPPER_BODY)
    for side in (-1.0, 1.0):
        du, dv = np.abs(u - side * spread), np.abs(v)
        outline = (du <= 0.017 * scale) & (dv <= 0.04 * scale)
        finger = (du <= 0.017 * scale - 1) & (dv <= 0.04 * scale - 1)
        _paint(img, sl, outline, _OUTLINE)
        _paint(img, sl, finger, _GRIPPER_FINGER)


# ---------------------------------------------------------------- static layer


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    if name == "wood":
        grain = np.sin(u * 0.35 + 3.0 * np.sin(v * 0.05 + phase[0]) + phase[1])
        plank = ((u + phase[2] * 10) % 32 < 1.5)
        shade = 1 + 0.10 * grain - 0.3 * plank
        rgb = np.array((165, 115, 68), np.float32) * shade[..., None]
    elif name == "marble":
        turbulence = 2.5 * np.sin(u * 0.045 + v * 0.06 + phase[0]) + np.sin(v * 0.11 + phase[1])
        vein = np.abs(np.sin(u * 0.04 + v * 0.025 + turbulence))
        shade = 1 - 0.22 * np.exp(-vein / 0.08)
        rgb = np.array((222, 222, 214), np.float32) * shade[..., None]
    elif name == "checker":
        cell = int(rng.integers(12, 20))
        dark = ((u + phase[0] * 5) // cell + (v + phase[1] * 5) // cell) % 2 == 1
        rgb = np.where(dark[..., None], np.float32(118), np.float32(182)) * np.ones(3, np.float32)
    else:
        base = {"gray": (128, 128, 134), "white": (232, 232, 226), "green": (46, 112, 66)}[name]
        rgb = np.broadcast_to(np.array(base, np.float32), (size, size, 3)).copy()
    # Brightness jitter and a soft lighting gradient (smooth, so frames compress well as PNG).
    slope = rng.uniform(-0.08, 0.08, size=2) / size
    light = rng.uniform(0.92, 1.08) + slope[0] * (u - size / 2) + slope[1] * (v - size / 2)
    return np.clip(rgb * light[..., None], 0, 255).astype(np.uint8)


_DIGIT_SEGMENTS = {   # seven-segment digits: a top, b top right, c bottom right, d bottom, ...
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg",
    "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}


@functools.lru_cache(maxsize=64)
def glyph_alpha(symbol: str, size_px: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a card's symbol, drawn 4x larger and averaged down."""
    s = 64
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    if symbol in _DIGIT_SEGMENTS:
        x0, x1, y0, ym, y1, t = 16, 48, 4, 32, 60, 8
        boxes = {"a": (x0, y0, x1, y0 + t), "g": (x0, ym - t // 2, x1, ym + t // 2),
                 "d": (x0, y1 - t, x1, y1), "f": (x0, y0, x0 + t, ym), "b": (x1 - t, y0, x1, ym),
                 "e": (x0, ym, x0 + t, y1), "c": (x1 - t, ym, x1, y1)}
        for segment in _DIGIT_SEGMENTS[symbol]:
            draw.rectangle(boxes[segment], fill=255)
    elif symbol == "heart":
        draw.ellipse((6, 8, 34, 36), fill=255)
        draw.ellipse((30, 8, 58, 36), fill=255)
        draw.polygon([(8, 28), (56, 28), (32, 58)], fill=255)
    elif symbol == "square":
        draw.rectangle((12, 12, 52, 52), fill=255)
    elif symbol == "cross":
        draw.line((10, 10, 54, 54), fill=255, width=12)
        draw.line((10, 54, 54, 10), fill=255, width=12)
    elif symbol == "moon":
        draw.ellipse((6, 6, 58, 58), fill=255)
        draw.ellipse((22, 0, 66, 48), fill=0)
    else:
        raise ValueError(f"unknown card symbol {symbol!r}")
    small = canvas.resize((size_px, size_px), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _draw_card(img: np.ndarray, symbol: str, xy, card_half: float = world.CARD_HALF) -> None:
    size = img.shape[0]
    cx, cy = _to_px(xy, size)
    half = card_half * size
    sl, u, v = _window(size, cx, cy, half)
    box = np.maximum(np.abs(u), np.abs(v))
    _paint(img, sl, box <= half, _OUTLINE)
    _paint(img, sl, box <= half - 1, (246, 246, 238))
    glyph_px = int(2 * half - 4)
    gx0, gy0 = round(cx - glyph_px / 2), round(cy - glyph_px / 2)
    alpha = glyph_alpha(symbol, glyph_px)
    ys, xs = slice(max(gy0, 0), min(gy0 + glyph_px, size)), slice(max(gx0, 0),
                                                                   min(gx0 + glyph_px, size))
    alpha = alpha[ys.start - gy0: ys.stop - gy0, xs.start - gx0: xs.stop - gx0, None]
    ink = np.array((200, 30, 45) if symbol == "heart" else (20, 20, 20), np.float32)
    img[ys, xs] = (img[ys, xs] * (1 - alpha) + ink * alpha).astype(np.uint8)


def render_static(state: world.WorldState, size: int = IMAGE_SIZE) -> np.ndarray:
    """Table texture and cards: fixed for an episode, drawn once."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"cannot render a {size}px table: the smallest is {MIN_IMAGE_SIZE}px "
                         "(cards' symbols need a pixel); render larger and resize.")
    img = _background(state.background, size, np.random.default_rng(state.texture_seed))
    for symbol, xy in zip(state.card_symbols, state.card_xy, strict=True):
        _draw_card(img, symbol, xy, state.card_half)
    return img


def render_frame(static: np.ndarray, state: world.WorldState) -> np.ndarray:
    """The camera image: (size, size, 3) uint8."""
    img = static.copy()
    lifted = [i for i in range(len(state.obj_xy)) if state.obj_z[i] > 0 or i == state.held]
    for i in lifted:
        if state.obj_z[i] > 0.005:
            _draw_shadow(img, state.obj_xy[i], state.obj_z[i], world.OBJECT_RADIUS)
    if state.ee[2] > 0.005:
        _draw_shadow(img, state.ee[:2], state.ee[2], 0.035, alpha=0.6)
    for i in range(len(state.obj_xy)):
        if i not in lifted:
            _draw_object(img, state.shapes[i], state.colors[i], state.obj_xy[i], 0.0)
    for i in lifted:
        _draw_object(img, state.shapes[i], state.colors[i], state.obj_xy[i], state.obj_z[i])
    _draw_gripper(img, state.ee, state.gripper_closed)
    return img


def render(state: world.WorldState, size: int = IMAGE_SIZE) -> np.ndarray:
    return render_frame(render_static(state, size), state)


def gripper_view(frame: np.ndarray, ee, view: float = GRIPPER_VIEW) -> np.ndarray:
    """What a downward camera riding above the gripper sees: `frame` (the whole table, from
    `render_frame`) re-centred on the gripper's x, y and showing `view` table widths (off the
    table is black), resampled to the frame's size. The gripper is always at the centre, so where
    the named object or goal is in the image says directly which way to move."""
    size = frame.shape[0]
    half = max(1, round(view * size / 2))
    canvas = np.zeros((size + 2 * half, size + 2 * half, 3), np.uint8)
    canvas[half:half + size, half:half + size] = frame
    cx, cy = _to_px(ee, size)
    x0, y0 = round(cx), round(cy)
    crop = canvas[y0:y0 + 2 * half, x0:x0 + 2 * half]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
