"""Per-dataset mappings: where a dataset keeps the fields the pipelines need.

A mapping is plain data (a dict that becomes a ConfigDict in `config.data.sources.<name>.mapping`),
so a new dataset needs a config entry, not code. Keys are feature paths joined by `/`
(`steps/observation/image`); a path may end in an index or a slice of the last axis
(`steps/action[0:3]`, `steps/action[6]`) for datasets that store one flat action vector.

Robot (RLDS) mapping keys:
  image           the camera image, a step feature (encoded Image, uint8 tensor or encoded bytes)
  instruction     a `steps/...` path (step-level) or an episode-level path (`episode_metadata/...`)
  translation     3 values: dx, dy, dz
  rotation        3 values: droll, dpitch, dyaw
  gripper         1 value (a [1] vector or a scalar)
  gripper_scale, gripper_offset   gripper = raw * scale + offset (e.g. map {0,1} to {-1,1})
  terminate       a one-hot vector, a scalar, or `steps/is_last`
  terminate_kind  one_hot | scalar   (scalar: terminate when the value > 0.5)
  terminate_index one_hot only: the index whose 1 means "end the episode"

Web mapping keys: image, question (VQA only), answers (a string or a list of strings) or caption.
"""
import copy

ROBOT_KEYS = ("image", "instruction", "translation", "rotation", "gripper", "terminate")

# The RT-1 data RT-2 trained on, as published in Open X-Embodiment (`fractal20220817_data`).
# terminate_episode is RT-1's 3-way mode one-hot; [1, 0, 0] means "terminate".
FRACTAL = dict(
    image="steps/observation/image",
    instruction="steps/observation/natural_language_instruction",
    translation="steps/action/world_vector",
    rotation="steps/action/rotation_delta",
    gripper="steps/action/gripper_closedness_action",
    gripper_scale=1.0,
    gripper_offset=0.0,
    terminate="steps/action/terminate_episode",
    terminate_kind="one_hot",
    terminate_index=0,
)

# The toy tabletop world (data_pipelines/builders/toy_world.py) is written in the fractal schema.
TOY_WORLD = dict(FRACTAL)

# Open X-Embodiment datasets that follow the "flat action" convention (e.g. bridge as converted
# by OXE): a 7-vector [dx dy dz droll dpitch dyaw gripper], a step-level `language_instruction`
# and the end of the episode from `is_last`.
OXE_FLAT_ACTION = dict(
    image="steps/observation/image",
    instruction="steps/language_instruction",
    translation="steps/action[0:3]",
    rotation="steps/action[3:6]",
    gripper="steps/action[6]",
    gripper_scale=1.0,
    gripper_offset=0.0,
    terminate="steps/is_last",
    terminate_kind="scalar",
    terminate_index=0,
)

# Web data: VQA (a list of reference answers) and captions.
TOY_VQA = dict(image="image", question="question", answers="answers")
TOY_CAPTIONS = dict(image="image", caption="caption")
VQAV2_TFDS = dict(image="image", question="question/text", answers="answers/answer")
COCO_CAPTIONS_TFDS = dict(image="image", caption="captions/text")

_MAPPINGS = {
    "fractal20220817_data": FRACTAL,
    "toy_world": TOY_WORLD,
    "oxe_flat_action": OXE_FLAT_ACTION,
    "toy_vqa": TOY_VQA,
    "toy_captions": TOY_CAPTIONS,
    "vqav2": VQAV2_TFDS,
    "coco_captions": COCO_CAPTIONS_TFDS,
}


def get_mapping(name):
    """Returns a copy of a shipped mapping by name (to be put into a config)."""
    if name not in _MAPPINGS:
        raise KeyError(
            f"No shipped data mapping named {name!r}; known: {sorted(_MAPPINGS)}. "
            "Write the mapping into the source's config instead (see data_pipelines/mappings.py).")
    return copy.deepcopy(_MAPPINGS[name])


def mapping_names():
    return sorted(_MAPPINGS)
