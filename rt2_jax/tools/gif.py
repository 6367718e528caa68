"""Animated GIFs of closed-loop episodes: each frame shows the camera image (and, when recorded,
the whole table beside it), the instruction and the action the policy decoded for it, so a
person can watch what the policy did."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

_SCALE = 2
_TEXT_HEIGHT = 44


def _format_action(action) -> str:
    a = np.asarray(action, np.float64)
    return (f"term {int(a[0] >= 0.5)} d=({a[1]:+.2f},{a[2]:+.2f},{a[3]:+.2f}) "
            f"grip {'close' if a[7] > 0.5 else 'open'}")


def episode_frames(record: dict) -> list[Image.Image]:
    """One RGB frame per step of an evaluator record with 'frames' and 'actions'."""
    if len(record["frames"]) != len(record["actions"]):
        raise ValueError(f"record has {len(record['frames'])} frames but "
                         f"{len(record['actions'])} actions")
    out = []
    outcome = "success" if record.get("success") else "failure"
    tables = record.get("table_frames") or [None] * len(record["frames"])
    for t, (image, action) in enumerate(zip(record["frames"], record["actions"], strict=True)):
        image = np.asarray(image, np.uint8)
        if tables[t] is not None:   # camera | table, side by side at the camera's height
            table = np.asarray(Image.fromarray(np.asarray(tables[t], np.uint8)).resize(
                image.shape[1::-1], Image.BILINEAR))
            gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
            image = np.concatenate([image, gap, table], axis=1)
        h, w = image.shape[:2]
        canvas = Image.new("RGB", (w * _SCALE, h * _SCALE + _TEXT_HEIGHT), (255, 255, 255))
        canvas.paste(Image.fromarray(image).resize((w * _SCALE, h * _SCALE), Image.NEAREST))
        draw = ImageDraw.Draw(canvas)
        y = h * _SCALE + 2
        draw.text((4, y), record.get("instruction", "")[:42], fill=(0, 0, 0))
        draw.text((4, y + 14), f"t={t} {_format_action(action)}", fill=(0, 0, 160))
        draw.text((4, y + 28), f"episode {record.get('episode', '?')}: {outcome}",
                  fill=(0, 120, 0) if record.get("success") else (170, 0, 0))
        out.append(canvas)
    return out


def write_episodes_gif(path: str, records: list[dict], fps: int = 4) -> int:
    """Writes the episodes one after another to `path` (parent dirs created); returns the
    number of frames. Raises ValueError when no record has frames."""
    frames = [frame for record in records for frame in episode_frames(record)]
    if not frames:
        raise ValueError("no recorded episode frames to write; evaluate with record_frames > 0")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                   loop=0, optimize=False)
    return len(frames)
