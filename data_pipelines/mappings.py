"""Per-dataset mappings: where a dataset keeps the fields the pipelines need.

A mapping is plain data (a dict that becomes a ConfigDict in `config.data.sources.<name>.mapping`),
so a new dataset needs a config entry, not code. Keys are feature paths joined by `/`
(`steps/observation/image`); a path may end in an index or a slice of the last axis
(`steps/action[0:3]`, `steps/action[6]`) for datasets that store one flat action vector.

Robot (RLDS) mapping keys:
  image           the camera image, a step feature (encoded Image, uint8 tensor or encoded bytes)
  wrist_image     a second (wrist) camera, a step feature; "" when the robot has none. Read only
                  when the model takes one (config.model.wrist_camera); see rt2_jax/preprocessing
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
    wrist_image="",
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
    wrist_image="",
)

# Open X-Embodiment datasets (`gs://gresearch/robotics/<name>/0.1.0` in the OXE release). The
# feature names below are those the TensorFlow Datasets catalog lists for each dataset
# (tensorflow.org/datasets/catalog/<name>); none was checked against the real files here.
# Each dataset's actions are binned with bounds from its own statistics, so units and sign
# conventions that differ between robots need no rescaling; what a dim means (e.g. the gripper's
# direction) is the dataset's.

# bridge as the current catalog lists it: a flat 7-vector action [dx dy dz droll dpitch dyaw
# gripper], a step-level `language_instruction`, four 256x256 cameras `image_0`..`image_3`
# (image_0 the main one; none is a wrist camera) and no terminate signal (`is_last` instead).
# An older release of bridge in the OXE bucket stores a dict action (world_vector,
# rotation_delta, open_gripper, terminate_episode) and `observation/image`; for that one map
# those keys instead (as for berkeley_autolab_ur5 below, with gripper=steps/action/open_gripper).
BRIDGE = dict(OXE_FLAT_ACTION, image="steps/observation/image_0")

# berkeley_autolab_ur5 (UR5, cloth and pick-place tasks; catalog: `gripper_closedness_action`
# a float32 scalar, 1 close / -1 open / 0 no change; `terminate_episode` a float32 scalar;
# `rotation_delta` roll, pitch, yaw; 480x640 `image` and wrist camera `hand_image`): fractal's
# feature names with a scalar terminate and a wrist camera. One public loader flips hand_image
# from BGR to RGB; that was not checked here.
BERKELEY_AUTOLAB_UR5 = dict(FRACTAL, terminate_kind="scalar",
                            wrist_image="steps/observation/hand_image")

# taco_play (Franka, play in a kitchen; catalog: `rel_actions_world` a 7-vector of relative
# actions in the robot base frame, dims 0-2 x y z, 3-5 described as yaw, pitch, roll, dim 6
# the gripper, -1 open / 1 close; `terminate_episode` a float32 scalar; 150x200 `rgb_static`
# and 84x84 wrist camera `rgb_gripper`). The rotation dims are taken in stored order, as
# Octo's OXE loader takes them; whether dim 3 is really yaw was not checked.
TACO_PLAY = dict(BERKELEY_AUTOLAB_UR5,   # the same instruction and scalar terminate
                 image="steps/observation/rgb_static",
                 wrist_image="steps/observation/rgb_gripper",
                 translation="steps/action/rel_actions_world[0:3]",
                 rotation="steps/action/rel_actions_world[3:6]",
                 gripper="steps/action/rel_actions_world[6]")

# Web data: VQA (a list of reference answers) and captions.
TOY_VQA = dict(image="image", question="question", answers="answers")
TOY_CAPTIONS = dict(image="image", caption="caption")
VQAV2_TFDS = dict(image="image", question="question/text", answers="answers/answer")
COCO_CAPTIONS_TFDS = dict(image="image", caption="captions/text")

_MAPPINGS = {
    "fractal20220817_data": FRACTAL,
    "toy_world": TOY_WORLD,
    "oxe_flat_action": OXE_FLAT_ACTION,
    "bridge": BRIDGE,
    "berkeley_autolab_ur5": BERKELEY_AUTOLAB_UR5,
    "taco_play": TACO_PLAY,
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
