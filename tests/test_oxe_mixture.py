"""The shipped Open X-Embodiment mixture (`configs/oxe.py`, `data_config.oxe_mixture`) on small
datasets written in the schemas of fractal20220817_data, bridge, taco_play and
berkeley_autolab_ur5: every dataset is read through its own mapping, binned with its own
bounds and weighted the OXE way (weight x number of steps)."""

import data_fixtures as fx
import numpy as np
import pytest

from configs import oxe
from data_pipelines import config as data_config
from data_pipelines import mixture
from rt2_jax import actions as actions_lib

LENGTHS = {"fractal20220817_data": (3, 4, 2, 5), "bridge": (5, 5, 5, 5), "taco_play": (2, 3),
           "berkeley_autolab_ur5": (4, 4)}


@pytest.fixture(scope="module")
def oxe_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxe")
    dirs = {name: fx.write_fake_oxe(root, name, lengths=LENGTHS[name]) for name in LENGTHS}
    dirs["vqa"] = fx.write_fake_vqa(root, name="oxe_vqa", num_examples=20,
                                    image_shape=(8, 8, 3))
    return dirs


def oxe_config(dirs, batch=16):
    """configs/oxe.py with the tiny model, every split the whole (small) dataset."""
    config = oxe.get_config(",".join(f"{k}={v}" for k, v in dirs.items()) + ",model=tiny")
    for name in LENGTHS:
        config.data.sources[name].train_split = "train"
        config.data.sources[name].eval_split = "train"
    config.data.sources.vqa.mapping.update(question="question", answers="answers")  # toy schema
    config.actions.bounds = "min_max"
    config.data.augment.enabled = False
    config.data.shuffle_buffer = 32
    config.data.global_batch_size = batch
    config.data.eval.global_batch_size = batch
    config.data.eval.max_examples_per_source = 0
    return config


def expected_actions(name):
    return np.array([fx.oxe_action(name, e, t, n) for e, n in enumerate(LENGTHS[name])
                     for t in range(n)])


def test_oxe_config_names_each_dataset_with_its_mapping_and_weight(oxe_dirs):
    config = oxe_config(oxe_dirs)
    sources = config.data.sources
    assert set(sources) == {*LENGTHS, "vqa"} and config.data.weight_robots_by_size
    assert config.image_size == 64   # model=tiny
    for name in LENGTHS:
        assert sources[name].kind == "robot" and sources[name].builder_dir == oxe_dirs[name]
        assert dict(sources[name].mapping) == data_config.mappings.get_mapping(
            data_config.OXE_DATASETS[name][0])
    assert sources.taco_play.mapping.wrist_image == "steps/observation/rgb_gripper"
    assert sources.berkeley_autolab_ur5.mapping.wrist_image == "steps/observation/hand_image"
    assert sources.fractal20220817_data.mapping.wrist_image == ""
    # With web data the robots share half of the mixture in OXE's relative weights.
    total = sum(w for _, w in data_config.OXE_DATASETS.values())
    for name, (_, weight) in data_config.OXE_DATASETS.items():
        assert sources[name].weight == pytest.approx(0.5 * weight / total)
    assert sources.vqa.weight == pytest.approx(0.5) and sources.vqa.mapping.question
    only = data_config.oxe_mixture({"taco_play": "/d/taco"}, weights={"taco_play": 3.0})
    assert set(only) == {"taco_play"} and only["taco_play"].weight == pytest.approx(1.0)


def test_oxe_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"needs robot datasets.*berkeley_autolab_ur5"):
        oxe.get_config("")
    with pytest.raises(ValueError, match=r"no shipped mapping for \['kuka'\]"):
        oxe.get_config("kuka=/d/kuka")
    with pytest.raises(ValueError, match="NAME=BUILDER_DIR"):
        oxe.get_config("taco_play")
    with pytest.raises(ValueError, match=r"model='huge'"):
        oxe.get_config("taco_play=/d/t,model=huge")
    with pytest.raises(ValueError, match=r"weights given for \['bridge'\]"):
        data_config.oxe_mixture({"taco_play": "/d/t"}, weights={"bridge": 1.0})


def test_each_oxe_dataset_is_read_mapped_and_binned_with_its_own_bounds(oxe_dirs):
    mix = mixture.build_mixture(oxe_config(oxe_dirs), split="val", progress=False)
    names = list(mix.source_names)
    seen = {name: [] for name in LENGTHS}
    for batch in mix:
        for row in np.flatnonzero(batch["is_robot"] & batch["valid"]):
            name = names[batch["source"][row]]
            raw = batch["action_raw"][row]
            seen[name].append(raw)
            tok = mix.dataset_tokenizers[name]
            decoded = tok.decode(tok.token_ids_to_bins(
                batch["decoder_tokens"][row, :actions_lib.NUM_DIMS]))
            assert decoded[0] == raw[0], name
            slack = tok.bounds.bin_width() / 2 * (1 + 1e-4) + 1e-6 * np.abs(raw[1:])
            assert np.all(np.abs(decoded[1:] - raw[1:]) <= slack), name
    for name in LENGTHS:
        want = expected_actions(name)
        got = np.array(seen[name])
        # Every step read once (the eval split is in order), mapped to the RT-2 action: the
        # flat vector of bridge, taco_play's rel_actions_world and scalar terminate,
        # berkeley_autolab_ur5's scalar gripper and terminate, fractal's one-hot terminate.
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
        assert got[:, 0].sum() == len(LENGTHS[name])   # one terminate per episode
        bounds = mix.dataset_bounds[name]               # min_max: this dataset's own range
        np.testing.assert_allclose(bounds.low, want[:, 1:].min(0), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(bounds.high, want[:, 1:].max(0), rtol=1e-6, err_msg=name)
    # Four different ranges (the datasets' scales differ up to 30x): four sets of bins.
    assert len({tuple(np.round(b.high, 6)) for b in mix.dataset_bounds.values()}) == 4


def test_oxe_weights_scale_with_dataset_size(oxe_dirs):
    mix = mixture.build_mixture(oxe_config(oxe_dirs), progress=False)
    weights = dict(zip(mix.source_names, mix.weights, strict=True))
    steps = {name: mix.all_action_stats[name]["num_steps"] for name in LENGTHS}
    assert steps == {name: sum(n) for name, n in LENGTHS.items()}
    scaled = {name: data_config.OXE_DATASETS[name][1] * steps[name] for name in LENGTHS}
    for name in LENGTHS:
        assert weights[name] == pytest.approx(0.5 * scaled[name] / sum(scaled.values()))
    assert weights["vqa"] == pytest.approx(0.5)
    batch = next(mix)
    assert batch["image"].shape == (16, 64, 64, 3) and "wrist_present" not in batch
