"""The `config.data` block: sources (with their mappings and weights), batching and images.

Experiment configs call `get_data_config(...)`; every field can be overridden from the command
line (`--config.data.sources.robot.weight=2`). Sources are ordered by name; a batch's `source`
column indexes that order (`Mixture.source_names`).
"""
import ml_collections

from data_pipelines import mappings


def robot_source(*, weight, builder_dir="", mapping="fractal20220817_data", toy_world="",
                 train_split="train[:95%]", eval_split="train[95%:]"):
    """An RLDS robot source; `mapping` names a shipped mapping (data_pipelines/mappings.py)."""
    return ml_collections.ConfigDict(dict(
        kind="robot", weight=float(weight), builder_dir=builder_dir, toy_world=toy_world,
        train_split=train_split, eval_split=eval_split,
        mapping=ml_collections.ConfigDict(mappings.get_mapping(mapping))))


def web_source(*, kind, weight, mapping, builder_dir="", tfds_name="", data_dir="", toy_world="",
               train_split="train", eval_split="validation", answer_choice="random",
               locate_answers=False, locate_exclude=""):
    """A VQA (kind="vqa") or captioning (kind="caption") source from TFDS. `locate_answers`:
    its answers of the form "x y" (integers 0..255 on a 256 grid over the image, x from the
    left, y from the top) are points that also train ViT keypoint 0 when
    config.train.locate_weight > 0 (rt2_jax/localization.py). `locate_exclude`: a regular
    expression (RE2) searched in the question; rows it matches train only their text answer,
    not the keypoint (e.g. "gripper": keypoint 0 then learns the things a robot prompt names)."""
    return ml_collections.ConfigDict(dict(
        kind=kind, weight=float(weight), builder_dir=builder_dir, tfds_name=tfds_name,
        data_dir=data_dir, toy_world=toy_world, train_split=train_split,
        eval_split=eval_split, answer_choice=answer_choice, locate_answers=bool(locate_answers),
        locate_exclude=str(locate_exclude),
        mapping=ml_collections.ConfigDict(mappings.get_mapping(mapping))))


def toy_world_sources(robot_weight=0.5):
    """The embedded default: the toy world's robot episodes, VQA and captions."""
    web_weight = (1.0 - robot_weight) / 2
    return dict(
        robot=robot_source(weight=robot_weight, mapping="toy_world", toy_world="robot",
                           train_split="train", eval_split="val"),
        vqa=web_source(kind="vqa", weight=web_weight, mapping="toy_vqa", toy_world="vqa",
                       train_split="train", eval_split="val", locate_answers=True),
        captions=web_source(kind="caption", weight=web_weight, mapping="toy_captions",
                            toy_world="captions", train_split="train", eval_split="val"),
    )


# Open X-Embodiment datasets with a shipped mapping (data_pipelines/mappings.py): name ->
# (mapping, relative weight). The weights are Octo's "OXE magic soup" ones for these datasets
# (octo/data/oxe/oxe_dataset_mixes.py), which Octo multiplies by each dataset's size; set
# config.data.weight_robots_by_size=True for that (oxe_data_config does).
OXE_DATASETS = {
    "fractal20220817_data": ("fractal20220817_data", 0.54087122203),
    "bridge": ("bridge", 1.0),
    "taco_play": ("taco_play", 2.0),
    "berkeley_autolab_ur5": ("berkeley_autolab_ur5", 2.0),
}


def oxe_mixture(builder_dirs, *, robot_weight=1.0, weights=None, train_split="train[:95%]",
                eval_split="train[95%:]"):
    """Robot sources for Open X-Embodiment datasets: `builder_dirs` maps dataset names (keys
    of OXE_DATASETS) to their RLDS version directories (local or gs://, e.g.
    gs://bucket/taco_play/0.1.0); each gets its shipped mapping and its OXE_DATASETS weight
    (or `weights[name]`), scaled so that the robot sources' weights sum to `robot_weight`.
    Returns {name: robot_source}; add web sources next to them for co-fine-tuning."""
    builder_dirs, weights = dict(builder_dirs), dict(weights or {})
    known = sorted(OXE_DATASETS)
    if not builder_dirs:
        raise ValueError(f"oxe_mixture: no datasets given; name some of {known} with their "
                         "builder directories.")
    unknown = sorted((set(builder_dirs) | set(weights)) - set(OXE_DATASETS))
    if unknown:
        raise ValueError(f"oxe_mixture: no shipped mapping for {unknown}; known: {known}. Add "
                         "another dataset as a robot_source() with its own mapping.")
    unused = sorted(set(weights) - set(builder_dirs))
    if unused:
        raise ValueError(f"oxe_mixture: weights given for {unused}, which have no builder "
                         "directory.")
    empty = sorted(name for name, path in builder_dirs.items() if not path)
    if empty:
        raise ValueError(f"oxe_mixture: no builder directory for {empty}; pass each dataset's "
                         "RLDS version directory (the one holding dataset_info.json).")
    relative = {name: float(weights.get(name, OXE_DATASETS[name][1])) for name in builder_dirs}
    total = sum(relative.values())
    if total <= 0 or min(relative.values()) < 0:
        raise ValueError(f"oxe_mixture: weights must be >= 0 with a positive sum, got "
                         f"{relative}.")
    return {name: robot_source(weight=robot_weight * relative[name] / total,
                               builder_dir=str(path), mapping=OXE_DATASETS[name][0],
                               train_split=train_split, eval_split=eval_split)
            for name, path in builder_dirs.items()}


def parse_builder_dirs(text):
    """"name=dir,name=dir" (a config file's argument) -> {name: dir}."""
    out = {}
    for item in filter(None, (part.strip() for part in str(text or "").split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"Bad dataset entry {item!r}: write NAME=BUILDER_DIR (several "
                             "separated by commas).")
        out[name.strip()] = path.strip()
    return out


def get_data_config(*, sources=None, global_batch_size=16, eval_batch_size=None,
                    shuffle_buffer=1000, image_aspect="squash", augment=True):
    """The config.data ConfigDict. `sources`: name -> robot_source()/web_source() (default: toy)."""
    sources = toy_world_sources() if sources is None else sources
    return ml_collections.ConfigDict(dict(
        sources=ml_collections.ConfigDict(sources),
        global_batch_size=global_batch_size,     # examples per step over all processes
        shuffle_buffer=shuffle_buffer,           # per source, in examples (steps for robots)
        image_aspect=image_aspect,               # squash | pad | center_crop
        augment=ml_collections.ConfigDict(dict(
            enabled=augment,                     # train only; eval never augments
            crop_scale_min=0.8,                  # random resized crop: area fraction range
            crop_ratio_min=0.75, crop_ratio_max=4 / 3,
            brightness=0.1,                      # max delta on [0, 1] pixels
            contrast=0.1,                        # factor in [1 - c, 1 + c]
        )),
        skip_unreadable=False,                   # True: skip (count, log) undecodable records
        cache_dir="~/.cache/rt2_jax/data",       # action stats when the data dir is read-only
        toy_world=ml_collections.ConfigDict(dict(  # sources with toy_world= and no builder_dir
            cache_dir="",                        # "" = $RT2_JAX_CACHE or ~/.cache/rt2_jax
            episodes=300, vqa_scenes=2000, seed=0,
            locate_per_scene=2,                  # pointing questions per VQA scene
            locate_pairs_per_scene=0,            # object-and-card pointing questions per scene
            labels="intended",                   # robot steps record the noise-free plan
            noise_std=0.005,                     # expert motion noise (executed, not labelled)
            gripper_flip_prob=0.0,               # expert gripper slips (executed, not labelled)
            terminate_repeats=0,                 # solved steps labelled terminate, per episode
            move_quantum=0.0,                    # expert motion in multiples of this (0 = exact)
            grid=0.0,                            # robot scenes on multiples of this (0 = anywhere)
            card_half=0.07,                      # half a card's side (sim.world.check_card_half)
            card_cover_prob=0.0,                 # web scenes with an object over a card
            retreat_z=0.1,                       # expert's height after a release (place)
            release_z=0.06,                      # ... and where it releases (up to 0.3)
            tasks=(),                            # robot task kinds, cycled (() = all, drawn)
            pause_prob=0.05,                     # expert pauses per step (executed, not labelled)
            camera="fixed")),                    # robot camera: fixed | gripper (moves with it)
        action_stats_source="",                  # default robot dataset for the policy (""=first)
        weight_robots_by_size=False,             # robot weights x steps (OXE), robot share kept
        eval=ml_collections.ConfigDict(dict(
            global_batch_size=eval_batch_size or global_batch_size,
            max_examples_per_source=0,           # 0 = the whole eval split
            max_answers=10,                      # reference answers kept per VQA example
        )),
    ))
