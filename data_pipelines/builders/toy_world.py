"""TFDS datasets of the toy tabletop world (rt2_jax.sim): robot episodes, VQA and captions.

    python -m data_pipelines.builders.toy_world --out DIR --episodes 300 --vqa_scenes 2000

writes three ordinary TFDS directories, each readable with `tfds.builder_from_directory(path)`
without importing this module:

    DIR/toy_world_robot/1.1.0     RLDS episodes, the fractal20220817_data layout where it applies
    DIR/toy_world_vqa/1.1.0       image, question, answers (every acceptable short answer)
    DIR/toy_world_captions/1.1.0  image, caption (same scenes as the VQA data)
    DIR/toy_world.json            the generation parameters

Splits are `train` and `val` (a `val_fraction` of episodes / scenes). Held-out objects and
backgrounds (`HeldOut`) never appear in robot episodes, not even as distractors, and do appear
in VQA and caption scenes: RT-2's transfer experiment in miniature.

`terminate_episode` follows fractal's one-hot: [1, 0, 0] = terminate (the last step, where the
expert's action has terminate = 1), [0, 1, 0] = continue; index 2 is never used.

`ensure_toy_world(cache_dir, ...)` generates all three on first use under a directory named by
the parameters, writing to a temporary directory that is renamed only when complete.

(500 lines: the three TFDS builders, their feature specs and the cached generation share the
generation parameters and are kept together.)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from tqdm import tqdm

from rt2_jax import sim
from rt2_jax.sim import render, vqa, world

log = logging.getLogger(__name__)

FORMAT_VERSION = "1.4.0"   # bump when the generated data changes for the same parameters
ROBOT_NAME, VQA_NAME, CAPTIONS_NAME = "toy_world_robot", "toy_world_vqa", "toy_world_captions"
PARAMS_FILE = "toy_world.json"
TERMINATE, CONTINUE = [1, 0, 0], [0, 1, 0]
_EPISODE_STREAM, _SCENE_STREAM = 0, 1
_MAX_RETRIES = 5
LABEL_KINDS = ("intended", "executed")
RELEASE_NOTES = {   # of all three datasets (they share FORMAT_VERSION)
    "1.0.0": "First release.",
    "1.1.0": "Robot steps record the expert's intended action; VQA adds pointing questions.",
    "1.2.0": "Height is visible (the gripper's shadow falls 0.5 x its height beside it), a closed "
             "gripper's body is cyan, the "
             "gripper starts at 0.2 and hovers at 0.1, grasps reach 0.075 from an object's "
             "centre; the expert may move in whole steps (move_quantum up to 0.1).",
    "1.3.0": "Pointing questions also ask where the gripper is (\"point to the gripper\").",
    "1.4.0": "A pick lifts to the top of the workspace (0.4; success still needs 0.2), so lifting "
             "past the expert's \"done\" frame is impossible.",
}


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """What to generate. The tiny default (300 episodes, 2000 scenes) is enough for a tiny model
    to pick up colors, shapes and the approach-grasp-lift motion in ~10 min of CPU training."""

    episodes: int = 300
    vqa_scenes: int = 2000
    seed: int = 0
    questions_per_scene: int = 3
    locate_per_scene: int = 2        # pointing questions ("point to the X" -> "x y") per scene
    # Two-point questions per scene naming an object and a card ("point to the X and the card
    # showing 3" -> "x1 y1 x2 y2"); scenes without a card get none.
    locate_pairs_per_scene: int = 0
    val_fraction: float = 0.1
    noise_std: float = 0.005         # expert action noise (world units)
    pause_prob: float = 0.05         # expert pauses, for diversity
    gripper_flip_prob: float = 0.0   # executed gripper command inverted (a slip); label kept
    terminate_repeats: int = 0       # extra solved steps labelled terminate before the last
    camera: str = "fixed"            # robot frames: sim.CAMERAS ("fixed" or "gripper")
    move_quantum: float = 0.0        # expert motion in multiples of this (0 = exact)
    grid: float = 0.0                # robot scenes: objects, cards, gripper start on multiples
    # Half a card's side, in robot and web scenes alike (world.check_card_half).
    card_half: float = world.CARD_HALF
    # Share of web scenes with a card where an object rests on, or is held over, one of them
    # (sim.vqa.sample_vqa_scene's cover_prob): cards partly hidden, as a place's last frames show.
    card_cover_prob: float = 0.0
    # Height the expert's open gripper rises to after releasing an object (place, move near)
    # before "done" (sim.expert.RETREAT_Z; world.Z_MAX makes that last frame unlike any approach).
    retreat_z: float = sim.expert.RETREAT_Z
    # Height at which the expert opens the gripper over the goal (sim.expert.RELEASE_Z: lowered
    # first; up to CARRY_Z: released where it was carried).
    release_z: float = sim.expert.RELEASE_Z
    # Which action a step records: "intended" (the plan's action before noise and pauses; the
    # noisy one is executed, so states stay diverse but labels are consistent, as in DART) or
    # "executed" (what moved the robot, noise and pauses included).
    labels: str = "intended"
    max_episode_steps: int = sim.MAX_EPISODE_STEPS
    held_out: world.HeldOut = world.DEFAULT_HELD_OUT
    # Task kinds of the robot episodes, cycled by episode index (empty = each episode draws one
    # of world.TASK_KINDS). Web scenes are unaffected.
    tasks: tuple[str, ...] = ()

    def __post_init__(self):
        if self.episodes < 2 or self.vqa_scenes < 2:
            raise ValueError(f"need episodes >= 2 and vqa_scenes >= 2 (one for train, one for "
                             f"val), got episodes={self.episodes}, vqa_scenes={self.vqa_scenes}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.locate_per_scene < 0 or self.locate_pairs_per_scene < 0:
            raise ValueError(f"locate_per_scene and locate_pairs_per_scene must be >= 0, got "
                             f"{self.locate_per_scene}, {self.locate_pairs_per_scene}")
        if self.questions_per_scene < 1:
            raise ValueError(f"questions_per_scene must be >= 1, got {self.questions_per_scene}")
        if not 0 <= self.gripper_flip_prob < 1 or self.terminate_repeats < 0:
            raise ValueError(f"need 0 <= gripper_flip_prob < 1 and terminate_repeats >= 0, got "
                             f"{self.gripper_flip_prob}, {self.terminate_repeats}")
        if not 0 <= self.move_quantum <= sim.expert.MAX_MOVE_QUANTUM:
            raise ValueError(f"move_quantum must be in [0, {sim.expert.MAX_MOVE_QUANTUM}], got "
                             f"{self.move_quantum}")
        if self.camera not in sim.CAMERAS:
            raise ValueError(f"camera must be one of {sim.CAMERAS}, got {self.camera!r}")
        world.check_grid(self.grid)
        world.check_card_half(self.card_half)
        if not 0 <= self.card_cover_prob <= 1:
            raise ValueError(f"card_cover_prob must be in [0, 1], got {self.card_cover_prob}")
        sim.expert.check_retreat_z(self.retreat_z, sim.expert.check_release_z(self.release_z))
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"labels must be one of {LABEL_KINDS}, got {self.labels!r}")
        if isinstance(self.tasks, str):
            raise TypeError(f"tasks must be a sequence of task kinds, got the string "
                            f"{self.tasks!r}; write e.g. ('pick',)")
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        unknown = [t for t in self.tasks if t not in world.TASK_KINDS]
        if unknown:
            raise ValueError(f"tasks {unknown} are not task kinds; use some of "
                             f"{world.TASK_KINDS} (or none: all of them)")

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["held_out"] = {k: list(v) for k, v in out["held_out"].items()}
        out["tasks"] = list(self.tasks)
        # Data generated before these fields existed keeps its cache key.
        if not self.tasks:
            del out["tasks"]
        if not self.locate_pairs_per_scene:
            del out["locate_pairs_per_scene"]
        if self.card_half == world.CARD_HALF:
            del out["card_half"]
        if not self.card_cover_prob:
            del out["card_cover_prob"]
        if self.retreat_z == sim.expert.RETREAT_Z:
            del out["retreat_z"]
        if self.release_z == sim.expert.RELEASE_Z:
            del out["release_z"]
        return out

    @classmethod
    def from_json(cls, data: dict) -> GenerationParams:
        data = dict(data)
        held = data.pop("held_out")
        return cls(**data, held_out=world.HeldOut(**{k: tuple(v) for k, v in held.items()}))

    def cache_key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
        return (f"toy_world-v{FORMAT_VERSION}-e{self.episodes}-q{self.vqa_scenes}-s{self.seed}-"
                f"{digest[:10]}")

    def num_val(self, total: int) -> int:
        return min(max(1, round(total * self.val_fraction)), total - 1)


def _derived_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _split_indices(split: str, total: int, params: GenerationParams) -> range:
    n_val = params.num_val(total)
    return range(n_val) if split == "val" else range(n_val, total)


def _progress(iterable, total: int, desc: str):
    return tqdm(iterable, total=total, desc=desc, unit="ex", leave=False, disable=None,
                mininterval=1.0)


# ---------------------------------------------------------------- robot episodes


def robot_features() -> tfds.features.FeaturesDict:
    image = tfds.features.Image(shape=(128, 128, 3), dtype=np.uint8, encoding_format="png")
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict({
                "image": image,
                "natural_language_instruction": tfds.features.Tensor(shape=(), dtype=tf.string),
            }),
            "action": tfds.features.FeaturesDict({
                "world_vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "rotation_delta": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "gripper_closedness_action": tfds.features.Tensor(shape=(1,), dtype=np.float32),
                "terminate_episode": tfds.features.Tensor(shape=(3,), dtype=np.int32),
            }),
            "is_first": tf.bool,
            "is_last": tf.bool,
            "is_terminal": tf.bool,
            "reward": tfds.features.Scalar(dtype=np.float32),
        }),
        "episode_metadata": tfds.features.FeaturesDict({
            "task": tfds.features.Tensor(shape=(), dtype=tf.string),
            "instruction": tfds.features.Tensor(shape=(), dtype=tf.string),
            "seed": tfds.features.Scalar(dtype=np.int64),
            "objects": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=tf.string)),
            "background": tfds.features.Tensor(shape=(), dtype=tf.string),
            "cards": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=tf.string)),
            "success": tf.bool,
        }),
    })


def make_expert(env: sim.TabletopEnv, params: GenerationParams) -> sim.ScriptedExpert:
    """The scripted expert with the dataset's noise, pauses, slips and terminate holds."""
    return sim.ScriptedExpert(env, noise_std=params.noise_std, pause_prob=params.pause_prob,
                              gripper_flip_prob=params.gripper_flip_prob,
                              terminate_repeats=params.terminate_repeats,
                              move_quantum=params.move_quantum, retreat_z=params.retreat_z,
                              release_z=params.release_z)


def expert_episode(index: int, params: GenerationParams, env: sim.TabletopEnv,
                   expert: sim.ScriptedExpert) -> sim.Episode:
    """Episode `index` of the dataset: the first successful expert rollout among a few seeds
    (of task kind `params.tasks[index % len]` when tasks are given)."""
    task = params.tasks[index % len(params.tasks)] if params.tasks else None
    for retry in range(_MAX_RETRIES):
        seed = _derived_seed(params.seed, _EPISODE_STREAM, index, retry)
        episode = sim.rollout(env, expert, seed, task)
        if episode.success and episode.terminated:
            return episode
        log.warning("expert failed episode %d with seed %d; retrying", index, seed)
    raise RuntimeError(f"the scripted expert failed episode {index} {_MAX_RETRIES} times; "
                       "this is a bug in rt2_jax.sim")


def episode_example(episode: sim.Episode, labels: str = "intended") -> dict:
    steps = []
    last = len(episode.actions) - 1
    recorded = episode.intended_actions if labels == "intended" else episode.actions
    for t, (image, action) in enumerate(zip(episode.images, recorded, strict=True)):
        steps.append({
            "observation": {"image": _png(image),
                            "natural_language_instruction": episode.task.instruction},
            "action": {
                "world_vector": action[1:4],
                "rotation_delta": action[4:7],
                "gripper_closedness_action": action[7:8],
                "terminate_episode": np.array(TERMINATE if action[0] >= 0.5 else CONTINUE,
                                              np.int32),
            },
            "is_first": t == 0,
            "is_last": t == last,
            "is_terminal": t == last and episode.terminated,
            "reward": episode.rewards[t],
        })
    return {"steps": steps, "episode_metadata": {
        "task": episode.task.kind, "instruction": episode.task.instruction,
        "seed": episode.seed, "objects": episode.objects, "background": episode.background,
        "cards": list(episode.cards),
        "success": episode.success,
    }}


class ToyWorldRobot(tfds.core.GeneratorBasedBuilder):
    """RLDS episodes of the scripted expert in the toy tabletop world."""

    VERSION = tfds.core.Version(FORMAT_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = RELEASE_NOTES

    def __init__(self, *, params: GenerationParams | None = None, **kwargs):
        self._params = params or GenerationParams()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=robot_features(),
            description=("Scripted-expert episodes in the rt2_jax toy tabletop world. Actions: "
                         "world_vector = (dx, dy, dz) in table units per step, |.| <= 0.1; "
                         "rotation_delta = 0 (planar world); gripper_closedness_action in {0, 1} "
                         "(1 = closed); terminate_episode one-hot [1,0,0] = terminate, "
                         "[0,1,0] = continue. Image: 128x128 top-down camera."),
            metadata=tfds.core.MetadataDict(params=self._params.to_json()))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in ("train", "val")}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        p = self._params
        env = sim.TabletopEnv(max_episode_steps=p.max_episode_steps, held_out=p.held_out,
                              camera=p.camera, grid=p.grid, card_half=p.card_half)
        expert = make_expert(env, p)
        indices = _split_indices(split, p.episodes, p)
        for index in _progress(indices, len(indices), f"robot episodes ({split})"):
            yield index, episode_example(expert_episode(index, p, env, expert), p.labels)


# ---------------------------------------------------------------- VQA and captions


def _scene_features(extra: dict) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(128, 128, 3), dtype=np.uint8, encoding_format="png"),
        **extra,
        "objects": tfds.features.Sequence(tfds.features.Text()),
        "background": tfds.features.Text(),
        "scene_id": tfds.features.Scalar(dtype=np.int64),
    })


def vqa_features() -> tfds.features.FeaturesDict:
    return _scene_features({
        "question": tfds.features.Text(),
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "question_type": tfds.features.Text(),
    })


def caption_features() -> tfds.features.FeaturesDict:
    return _scene_features({"caption": tfds.features.Text()})


def scene(index: int, params: GenerationParams):
    """(state, png bytes, rng for its text) of VQA/caption scene `index`."""
    rng = np.random.default_rng(_derived_seed(params.seed, _SCENE_STREAM, index))
    state = vqa.sample_vqa_scene(rng, params.held_out, card_half=params.card_half,
                                 cover_prob=params.card_cover_prob)
    return state, _png(render.render(state)), rng


class _SceneBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(FORMAT_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = RELEASE_NOTES
    _DESCRIPTION = ""

    def __init__(self, *, params: GenerationParams | None = None, **kwargs):
        self._params = params or GenerationParams()
        super().__init__(**kwargs)

    def _features(self) -> tfds.features.FeaturesDict:
        raise NotImplementedError

    def _examples(self, state, image: bytes, rng) -> list[dict]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=self._features(), description=self._DESCRIPTION,
            metadata=tfds.core.MetadataDict(params=self._params.to_json()))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in ("train", "val")}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        p = self._params
        indices = _split_indices(split, p.vqa_scenes, p)
        for index in _progress(indices, len(indices), f"{self.name} scenes ({split})"):
            state, image, rng = scene(index, p)
            common = {"image": image, "objects": state.names, "background": state.background,
                      "scene_id": index}
            for k, example in enumerate(self._examples(state, image, rng)):
                yield f"{index}_{k}", {**common, **example}


class ToyWorldVqa(_SceneBuilder):
    """Questions about toy-world scenes with every acceptable short answer."""

    _DESCRIPTION = ("Questions about rt2_jax toy-world scenes (color, shape, existence, count, "
                    "position, left/right relations, cards, background) with all acceptable "
                    "short answers, and pointing questions (question_type 'locate') whose "
                    "answer is a point 'x y' on a 256 x 256 grid over the image (two points "
                    "'x1 y1 x2 y2' for 'locate_pair': an object, then a card). Scenes "
                    "include the objects, backgrounds and card symbols held out of the robot "
                    "episodes.")

    def _features(self):
        return vqa_features()

    def _examples(self, state, image, rng):
        qas = vqa.sample_questions(state, rng, self._params.questions_per_scene,
                                   self._params.held_out)
        qas += vqa.locate_questions(state, rng, self._params.locate_per_scene,
                                    self._params.held_out)
        qas += vqa.locate_pair_questions(state, rng, self._params.locate_pairs_per_scene)
        return [{"question": qa.question, "answers": list(qa.answers),
                 "question_type": qa.question_type} for qa in qas]


class ToyWorldCaptions(_SceneBuilder):
    """One caption per toy-world scene (the VQA data's scenes)."""

    _DESCRIPTION = ("Captions of rt2_jax toy-world scenes: every object left to right, the "
                    "table and the cards. Same scenes and scene_ids as toy_world_vqa.")

    def _features(self):
        return caption_features()

    def _examples(self, state, image, rng):
        return [{"caption": vqa.caption(state, rng)}]


# ---------------------------------------------------------------- generation and caching

BUILDERS = {"robot": ToyWorldRobot, "vqa": ToyWorldVqa, "captions": ToyWorldCaptions}


def dataset_paths(root: str | os.PathLike) -> dict[str, str]:
    """{'robot', 'vqa', 'captions'} -> the TFDS directory for builder_from_directory."""
    root = Path(root)
    names = {"robot": ROBOT_NAME, "vqa": VQA_NAME, "captions": CAPTIONS_NAME}
    return {kind: str(root / name / FORMAT_VERSION) for kind, name in names.items()}


def _is_complete(root: Path, params: GenerationParams) -> bool:
    try:
        stored = json.loads((root / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stored == params.to_json() and all(
        (Path(p) / "dataset_info.json").exists() for p in dataset_paths(root).values())


def _build_into(root: Path, params: GenerationParams) -> None:
    config = tfds.download.DownloadConfig(try_download_gcs=False,
                                          compute_stats=tfds.download.ComputeStatsMode.SKIP)
    for kind, cls in BUILDERS.items():
        start = time.time()
        builder = cls(params=params, data_dir=str(root))
        builder.download_and_prepare(download_dir=str(root / "downloads"),
                                     download_config=config)
        log.info("toy world: wrote %s dataset in %.1fs", kind, time.time() - start)
    shutil.rmtree(root / "downloads", ignore_errors=True)
    (root / PARAMS_FILE).write_text(json.dumps(params.to_json(), indent=2, sort_keys=True))


def generate(out: str | os.PathLike, params: GenerationParams) -> dict[str, str]:
    """Writes the three datasets into `out` atomically: built in a sibling temporary directory,
    renamed to `out` when complete. Returns at once if `out` already holds these parameters."""
    out = Path(out).expanduser()
    if _is_complete(out, params):
        log.info("toy world: reusing %s", out)
        return dataset_paths(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and does not hold toy-world data generated with "
                              f"these parameters; pass an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    log.info("toy world: generating %d episodes and %d VQA scenes into %s", params.episodes,
             params.vqa_scenes, out)
    start = time.time()
    previous_bar = tfds.core.utils.tqdm_utils._active   # our own tqdm bars replace TFDS's
    tfds.display_progress_bar(False)
    try:
        _build_into(tmp, params)
        if out.exists():
            out.rmdir()        # empty (checked above); rename needs it gone
        os.rename(tmp, out)
    except OSError:
        if _is_complete(out, params):   # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return dataset_paths(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        tfds.display_progress_bar(previous_bar)
    log.info("toy world: done in %.1fs", time.time() - start)
    return dataset_paths(out)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RT2_JAX_CACHE") or Path.home() / ".cache" / "rt2_jax")


def ensure_toy_world(cache_dir: str | os.PathLike | None = None, episodes: int = 300,
                     vqa_scenes: int = 2000, seed: int = 0, **kwargs) -> dict[str, str]:
    """Paths {'robot', 'vqa', 'captions', 'root'} of the toy-world datasets, generated on first
    use under `cache_dir` (default $RT2_JAX_CACHE or ~/.cache/rt2_jax) in a directory named by
    the parameters. `kwargs` are further GenerationParams fields."""
    params = GenerationParams(episodes=episodes, vqa_scenes=vqa_scenes, seed=seed, **kwargs)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root = cache_dir / "toy_world" / params.cache_key()
    return {**generate(root, params), "root": str(root)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to create (must be new or empty)")
    parser.add_argument("--episodes", type=int, default=GenerationParams.episodes)
    parser.add_argument("--vqa_scenes", type=int, default=GenerationParams.vqa_scenes)
    parser.add_argument("--seed", type=int, default=GenerationParams.seed)
    parser.add_argument("--questions_per_scene", type=int,
                        default=GenerationParams.questions_per_scene)
    parser.add_argument("--val_fraction", type=float, default=GenerationParams.val_fraction)
    parser.add_argument("--held_out_objects", default=",".join(world.DEFAULT_HELD_OUT.objects),
                        help="comma-separated '<color> <shape>' names kept out of robot episodes")
    parser.add_argument("--held_out_backgrounds",
                        default=",".join(world.DEFAULT_HELD_OUT.backgrounds))
    parser.add_argument("--held_out_symbols", default=",".join(world.DEFAULT_HELD_OUT.symbols),
                        help="comma-separated card symbols kept out of robot episodes")
    parser.add_argument("--locate_per_scene", type=int, default=GenerationParams.locate_per_scene)
    parser.add_argument("--locate_pairs_per_scene", type=int,
                        default=GenerationParams.locate_pairs_per_scene)
    parser.add_argument("--labels", choices=LABEL_KINDS, default=GenerationParams.labels)
    parser.add_argument("--noise_std", type=float, default=GenerationParams.noise_std)
    parser.add_argument("--gripper_flip_prob", type=float,
                        default=GenerationParams.gripper_flip_prob)
    parser.add_argument("--terminate_repeats", type=int,
                        default=GenerationParams.terminate_repeats)
    parser.add_argument("--camera", choices=sim.CAMERAS, default=GenerationParams.camera)
    parser.add_argument("--move_quantum", type=float, default=GenerationParams.move_quantum)
    parser.add_argument("--grid", type=float, default=GenerationParams.grid,
                        help="robot scenes: objects, cards and the gripper's start on multiples "
                             "of this (0 = anywhere)")
    parser.add_argument("--card_half", type=float, default=GenerationParams.card_half,
                        help="half a card's side, robot and web scenes (table units)")
    parser.add_argument("--card_cover_prob", type=float, default=GenerationParams.card_cover_prob,
                        help="share of web scenes with an object on or held over a card")
    parser.add_argument("--retreat_z", type=float, default=GenerationParams.retreat_z,
                        help="height the expert's open gripper rises to after releasing an "
                             "object (place, move near) before 'done'")
    parser.add_argument("--release_z", type=float, default=GenerationParams.release_z,
                        help="height at which the expert opens the gripper over the goal (place, "
                             "move near)")
    parser.add_argument("--tasks", default="",
                        help=f"comma-separated task kinds of the robot episodes, cycled (some "
                             f"of {','.join(world.TASK_KINDS)}; empty = all, drawn per episode)")
    parser.add_argument("--pause_prob", type=float, default=GenerationParams.pause_prob,
                        help="chance that the expert pauses at a step (not in the labels)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def names(text):
        return tuple(s.strip() for s in text.split(",") if s.strip())

    held_out = world.HeldOut(objects=names(args.held_out_objects),
                             backgrounds=names(args.held_out_backgrounds),
                             symbols=names(args.held_out_symbols))
    params = GenerationParams(episodes=args.episodes, vqa_scenes=args.vqa_scenes,
                              seed=args.seed, questions_per_scene=args.questions_per_scene,
                              locate_per_scene=args.locate_per_scene,
                              locate_pairs_per_scene=args.locate_pairs_per_scene,
                              labels=args.labels,
                              noise_std=args.noise_std,
                              gripper_flip_prob=args.gripper_flip_prob,
                              terminate_repeats=args.terminate_repeats, camera=args.camera,
                              move_quantum=args.move_quantum, grid=args.grid,
                              card_half=args.card_half,
                              card_cover_prob=args.card_cover_prob,
                              retreat_z=args.retreat_z, release_z=args.release_z,
                              val_fraction=args.val_fraction, held_out=held_out,
                              tasks=names(args.tasks), pause_prob=args.pause_prob)
    for kind, path in generate(args.out, params).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
