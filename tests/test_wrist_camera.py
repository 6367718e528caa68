"""The optional wrist camera (`config.model.wrist_camera`): a mixture of a robot with a wrist
camera (berkeley_autolab_ur5's schema), one without (fractal's) and web data yields the right
batches in both modes."""

import data_fixtures as fx
import numpy as np
import pytest

from configs import tiny
from data_pipelines import config as data_config
from data_pipelines import mixture
from rt2_jax import train_state

UR5, FRACTAL = "berkeley_autolab_ur5", "fractal20220817_data"
SIZE = 16


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrist")
    return {UR5: fx.write_fake_oxe(root, UR5, lengths=(3, 4)),
            FRACTAL: fx.write_fake_oxe(root, FRACTAL, lengths=(3, 2)),
            "vqa": fx.write_fake_vqa(root, name="wrist_vqa", num_examples=6,
                                     image_shape=(8, 8, 3))}


def wrist_config(dirs, mode, aspect="squash"):
    """The tiny config at 16 px over the two robots and VQA, in wrist-camera mode `mode`."""
    config = tiny.get_config()
    config.image_size = SIZE
    config.model.wrist_camera = mode
    sources = data_config.oxe_mixture({UR5: dirs[UR5], FRACTAL: dirs[FRACTAL]},
                                      robot_weight=0.8, train_split="train", eval_split="train")
    sources["vqa"] = data_config.web_source(kind="vqa", weight=0.2, mapping="toy_vqa",
                                            builder_dir=dirs["vqa"])
    config.data = data_config.get_data_config(sources=sources, global_batch_size=16,
                                              shuffle_buffer=16, image_aspect=aspect,
                                              augment=False)
    config.data.eval.global_batch_size = 8
    return config


def val_rows(config):
    """{source name: [(image, wrist_image or None, wrist_present)]} over the whole eval split."""
    mix = mixture.build_mixture(config, split="val", progress=False)
    rows = {}
    for batch in mix:
        assert set(batch) >= {"image", "wrist_present"} and batch["wrist_present"].dtype == bool
        assert batch["image"].shape == (8, SIZE, SIZE, 3)
        for i in np.flatnonzero(batch["valid"]):
            name = mix.source_names[batch["source"][i]]
            wrist = batch["wrist_image"][i] if "wrist_image" in batch else None
            rows.setdefault(name, []).append((batch["image"][i], wrist,
                                              bool(batch["wrist_present"][i])))
    assert {name: len(r) for name, r in rows.items()} == {UR5: 7, FRACTAL: 5, "vqa": 4}
    return rows


def test_tokens_mode_batches_carry_the_wrist_image_and_its_flag(dirs):
    rows = val_rows(wrist_config(dirs, "tokens"))
    for name, examples in rows.items():
        for image, wrist, present in examples:
            assert wrist.shape == (SIZE, SIZE, 3) and wrist.dtype == np.uint8
            assert present == (name == UR5)
            if name == UR5:   # the hand_image (flat grey) resized; the main image unchanged
                assert np.all(np.abs(wrist.astype(int) - fx.WRIST_GREY[UR5]) <= 1)
            else:              # no wrist camera: black
                assert not wrist.any()
            if name != "vqa":
                assert np.all(np.abs(image[..., 0].astype(int) - fx.MAIN_RED[name]) <= 1)


@pytest.mark.parametrize("aspect", ["squash", "center_crop"])
def test_side_by_side_puts_each_camera_in_its_half(dirs, aspect):
    rows = val_rows(wrist_config(dirs, "side_by_side", aspect))
    half = SIZE // 2
    for name, examples in rows.items():
        for image, wrist, present in examples:
            assert wrist is None and present == (name == UR5)
            left, right = image[:, :half].astype(int), image[:, half:].astype(int)
            if name != "vqa":
                assert np.all(np.abs(left[..., 0] - fx.MAIN_RED[name]) <= 1), name
            if name == UR5:
                assert np.all(np.abs(right - fx.WRIST_GREY[UR5]) <= 1)
            else:
                assert not right.any(), name


def test_without_the_option_batches_are_as_before(dirs):
    """The ur5 mapping names a wrist camera; with the option off it is not read."""
    config = wrist_config(dirs, "")
    batch = next(mixture.build_mixture(config, progress=False))
    assert set(batch) == set(train_state.MODEL_KEYS) == set(train_state.batch_spec(config, 16))
    assert batch["image"].shape == (16, SIZE, SIZE, 3)
    assert tiny.get_config().model.wrist_camera == ""   # off by default, settable by flag
