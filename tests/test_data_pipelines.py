"""Data pipelines end to end on small on-disk RLDS/TFDS datasets (tests/data_fixtures.py)."""
import os
import types

import data_fixtures as fx
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import config as data_config
from data_pipelines import mappings, mixture, robot, stats
from data_pipelines.builders import toy_world
from rt2_jax import tokenizer as tokenizer_lib

NUM_GOOD_STEPS = sum(fx.FRACTAL_EPISODE_LENGTHS) - 1  # one NaN step


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"robot": fx.write_fake_fractal(root), "vqa": fx.write_fake_vqa(root),
            "root": str(root)}


@pytest.fixture(scope="module")
def small_dirs(tmp_path_factory):
    """Tiny images and many episodes: for the mixture-statistics tests."""
    root = tmp_path_factory.mktemp("small")
    return {"robot": fx.write_fake_fractal(root, name="small_fractal", lengths=(5,) * 16,
                                           image_shape=(8, 8, 3)),
            "vqa": fx.write_fake_vqa(root, name="small_vqa", num_examples=40,
                                     image_shape=(8, 8, 3))}


def _config(dirs, **kwargs):
    config = fx.data_config(dirs["robot"], dirs["vqa"], **kwargs)
    config.max_prompt_len = 32
    return config


def _read_steps(robot_dir, mapping=None):
    builder = robot.open_builder(robot_dir)
    mapping = mapping or mappings.get_mapping("fractal20220817_data")
    counters = stats.Counters()
    episodes = robot.read_episodes(builder, mapping, "train", shuffle_files=False, seed=0,
                                   skip_unreadable=False)
    steps = list(robot.robot_steps(episodes, mapping, counters).as_numpy_iterator())
    return steps, counters.as_dict()


def test_robot_steps_end_to_end(data_dirs):
    steps, counts = _read_steps(data_dirs["robot"])
    assert len(steps) == NUM_GOOD_STEPS
    assert counts["empty_episodes"] == 1 and counts["nonfinite_steps"] == 1
    assert counts["episodes"] == len(fx.FRACTAL_EPISODE_LENGTHS)
    ids = [tuple(np.round(s["action"][1:3] * 100).astype(int)) for s in steps]
    expected = [(e, t) for e, n in enumerate(fx.FRACTAL_EPISODE_LENGTHS) for t in range(n)
                if (e, t) != (fx.NAN_EPISODE, fx.NAN_STEP)]
    assert ids == expected
    for step, (e, t) in zip(steps, expected, strict=True):
        assert step["action"][0] == float(t == fx.FRACTAL_EPISODE_LENGTHS[e] - 1)  # terminate
        assert step["instruction"].decode() == fx.INSTRUCTIONS[e % len(fx.INSTRUCTIONS)]
    image = mixture.decode_image(tf.constant(steps[0]["image"])).numpy()
    assert image.shape == (256, 320, 3) and image[0, 0, 0] == 0


def test_missing_keys_are_listed(data_dirs):
    builder = robot.open_builder(data_dirs["robot"])
    mapping = mappings.get_mapping("fractal20220817_data")
    mapping["image"] = "steps/observation/rgb"
    mapping["gripper"] = "steps/action/rotation_delta"
    with pytest.raises(ValueError) as err:
        robot.validate_robot_mapping(builder, mapping, "fractal")
    message = str(err.value)
    assert "steps/observation/rgb" in message and "has 3 values, needs 1" in message
    assert "steps/observation/image" in message  # the keys the dataset has
    assert "config.data.sources.fractal.mapping" in message


def test_flat_action_mapping_and_toy_world_schema(data_dirs):
    mapping = mappings.get_mapping("fractal20220817_data")
    mapping.update(translation="steps/action/rotation_delta[0:3]",
                   gripper="steps/action/world_vector[2]", terminate="steps/is_last",
                   terminate_kind="scalar")
    steps, _ = _read_steps(data_dirs["robot"], mapping)
    assert steps[0]["action"][1:4] == pytest.approx([0.1, -0.1, 0.0])
    assert steps[0]["action"][7] == pytest.approx(0.005)
    assert [s["action"][0] for s in steps[:3]] == [0.0, 0.0, 1.0]
    fake_builder = types.SimpleNamespace(info=types.SimpleNamespace(
        features=toy_world.robot_features(), full_name="toy_world_robot/1.0.0"))
    robot.validate_robot_mapping(fake_builder, mappings.get_mapping("toy_world"), "robot")


def test_action_stats_cached_and_reused(data_dirs, tmp_path, monkeypatch):
    builder = robot.open_builder(data_dirs["robot"])
    mapping = mappings.get_mapping("fractal20220817_data")
    first, path = stats.load_or_compute_action_stats(builder, data_dirs["robot"], mapping,
                                                     "train", cache_dir=str(tmp_path))
    assert path.startswith(data_dirs["robot"]) and os.path.exists(path)
    assert first["num_episodes"] == 6 and first["num_empty_episodes"] == 1
    assert first["num_steps"] == NUM_GOOD_STEPS and first["num_nonfinite_steps"] == 1
    assert first["max"][1] == pytest.approx(0.05) and first["min"][7] == -1.0

    def must_not_run(*args, **kwargs):
        raise AssertionError("stats recomputed despite the cache")

    monkeypatch.setattr(stats, "compute_action_stats", must_not_run)
    again, again_path = stats.load_or_compute_action_stats(builder, data_dirs["robot"],
                                                           mapping, "train")
    assert again == first and again_path == path
    mapping["gripper_scale"] = 2.0  # a different mapping is a different fingerprint
    with pytest.raises(AssertionError, match="recomputed"):
        stats.load_or_compute_action_stats(builder, data_dirs["robot"], mapping, "train")


def test_host_batch_contract(data_dirs):
    config = _config(data_dirs)
    mix = mixture.build_mixture(config, progress=False)
    batch = next(mix)
    b, s = 8, config.image_size
    expected = {"image": (np.uint8, (b, s, s, 3)), "encoder_tokens": (np.int32, (b, 32)),
                "encoder_mask": (np.bool_, (b, 32)), "decoder_tokens": (np.int32, (b, 12)),
                "decoder_loss_mask": (np.float32, (b, 12)), "source": (np.int32, (b,)),
                "is_robot": (np.bool_, (b,)), "action": (np.float32, (b, 8))}
    assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
    assert mix.source_names == ("robot", "vqa")
    for _ in range(3):
        robot_rows = np.flatnonzero(batch["is_robot"])
        if robot_rows.size and (~batch["is_robot"]).any():
            break
        batch = next(mix)
    tok, atok = mix.tokenizer, mix.action_tokenizer
    for row in range(b):
        prompt = tok.decode(batch["encoder_tokens"][row])
        target = batch["decoder_tokens"][row]
        assert batch["encoder_tokens"][row][batch["encoder_mask"][row]][-1] == tok.eos_id
        if batch["is_robot"][row]:
            assert prompt.startswith("Q: what action should the robot take to ")
            assert batch["decoder_loss_mask"][row].tolist() == [1.0] * 9 + [0.0] * 3
            assert target[8] == tok.eos_id and np.isin(target[:8], atok.action_ids).all()
            decoded = atok.action_from_token_ids(target[:8])
            low, high = atok.bounds.limits()
            expected_norm = (decoded[1:] - low) / (high - low) * 2 - 1
            np.testing.assert_allclose(batch["action"][row][1:], expected_norm, atol=1 / 128)
            assert batch["action"][row][0] == decoded[0]
        else:
            assert prompt.startswith("Q: what is item ") and tok.decode(target).startswith(
                ("answer", "second"))
            assert not batch["action"][row].any()
    assert np.abs(batch["action"]).max() <= 1.0
    assert mix.action_stats["num_steps"] == NUM_GOOD_STEPS


def test_prompt_templates_match_tokenizer():
    for text in ("pick up the red block", "  push it left "):
        joined = tf.constant("x")
        joined = mixture.web.template_join(tokenizer_lib.ROBOT_PROMPT, "instruction",
                                           tf.constant(text)).numpy().decode()
        assert joined == tokenizer_lib.robot_prompt(text)


def test_source_fractions_match_weights(small_dirs):
    config = _config(small_dirs, robot_weight=2 / 3, batch=500, image_size=8,
                     shuffle_buffer=64)
    config.data.augment.enabled = False
    mix = mixture.build_mixture(config, progress=False)
    sources = np.concatenate([next(mix)["source"] for _ in range(20)])
    assert sources.size == 10_000
    fraction_robot = float(np.mean(sources == 0))
    assert abs(fraction_robot - 2 / 3) < 0.02, fraction_robot


def test_source_without_train_split_is_left_out_of_training(small_dirs):
    # An eval-only source (weight > 0, train_split "") must not shift the weights onto the
    # wrong datasets or break sample_from_datasets: the others keep their relative weights.
    config = _config(small_dirs, robot_weight=2 / 3, batch=500, image_size=8,
                     shuffle_buffer=64)
    config.data.augment.enabled = False
    config.data.sources["eval_only"] = data_config.web_source(
        kind="vqa", weight=1.0, mapping="toy_vqa", builder_dir=small_dirs["vqa"],
        train_split="", eval_split="train")
    mix = mixture.build_mixture(config, progress=False)
    names = list(mix.source_names)
    assert mix.weights[names.index("eval_only")] == 0.0
    sources = np.concatenate([next(mix)["source"] for _ in range(10)])
    assert not np.any(sources == names.index("eval_only"))
    fraction_robot = float(np.mean(sources == names.index("robot")))
    assert abs(fraction_robot - 2 / 3) < 0.03, fraction_robot


def _first_batches(config, n, **kwargs):
    mix = mixture.build_mixture(config, progress=False, **kwargs)
    return [next(mix) for _ in range(n)]


def test_deterministic_for_a_seed(data_dirs):
    config = _config(data_dirs)
    a, b = _first_batches(config, 3), _first_batches(config, 3)
    c = _first_batches(config, 3, seed=99)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c, strict=True))


def test_iterator_save_restore_continues_stream(data_dirs, tmp_path):
    config = _config(data_dirs)
    mix = mixture.build_mixture(config, progress=False)
    for _ in range(2):
        next(mix)
    mix.save(str(tmp_path / "state"))
    expected = [next(mix) for _ in range(3)]
    resumed = mixture.build_mixture(config, progress=False)
    resumed.restore(str(tmp_path / "state"))
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(FileNotFoundError, match="data iterator state"):
        resumed.restore(str(tmp_path / "nothing"))


def test_two_processes_read_disjoint_data(data_dirs):
    config = _config(data_dirs)
    config.data.eval.global_batch_size = 8
    seen = []
    for process in range(2):
        mix = mixture.build_mixture(config, split="val", process_index=process,
                                    process_count=2, progress=False)
        assert mix.host_batch_size == 4
        rows = [(b["action_raw"][i], b["answers"][i, 0]) for b in mix
                for i in np.flatnonzero(b["valid"])]
        episodes = {round(float(a[1]) * 100) for a, ans in rows if not ans}
        questions = {ans for a, ans in rows if ans}
        seen.append((episodes, questions))
    (ep0, q0), (ep1, q1) = seen
    assert ep0 and ep1 and not ep0 & ep1
    assert ep0 | ep1 == {e for e, n in enumerate(fx.FRACTAL_EPISODE_LENGTHS) if n}
    assert q0 and q1 and not q0 & q1 and len(q0 | q1) == 4


def test_eval_split_keeps_raw_answers(data_dirs):
    config = _config(data_dirs)
    mix = mixture.build_mixture(config, split="val", progress=False)
    batches = list(mix)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == NUM_GOOD_STEPS + 4
    answers = {tuple(a for a in row if a) for b in batches for row in b["answers"][b["valid"]]
               if row[0]}
    assert (b"answer101", b"second") in answers and (b"answer100",) in answers
    # The padding batch a process feeds once its eval data runs out has the stream's keys,
    # shapes and dtypes, and no valid row.
    from rt2_jax import evaluation

    pad = evaluation.padding_batch(mix.dataset.element_spec)
    assert sorted(pad) == sorted(batches[0])
    for k, v in batches[0].items():
        assert pad[k].shape == v.shape and pad[k].dtype == v.dtype, k
    assert not pad["valid"].any() and (pad["source"] == -1).all()


@pytest.mark.parametrize("aspect", ["squash", "pad", "center_crop"])
def test_image_aspect_modes(aspect):
    image = tf.fill([20, 40, 3], tf.constant(200, tf.uint8))
    out = mixture.resize_image(image, 16, aspect).numpy()
    assert out.shape == (16, 16, 3)
    corner = out[0, 0, 0]
    assert (corner == 0) if aspect == "pad" else corner == pytest.approx(200, abs=1)


def _write_bad_image_dataset(data_dir):
    """Encoded images as plain bytes, one of them junk."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    features = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(),
                                                                         dtype=np.object_),
                                           "question": tfds.features.Text(),
                                           "answers": tfds.features.Sequence(
                                               tfds.features.Text())})
    examples = [(i, {"image": b"junk" if i == 2 else buffer.getvalue(), "question": f"q {i}?",
                     "answers": ["a"]}) for i in range(5)]
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name="bad_images", version="1.0.0", features=features, disable_shuffling=True,
        split_datasets={"train": examples, "validation": examples}, data_dir=str(data_dir))
    return os.fspath(builder.data_dir)


def test_unreadable_images_error_or_skip(data_dirs, tmp_path):
    config = _config({"robot": data_dirs["robot"], "vqa": _write_bad_image_dataset(tmp_path)})
    config.data.eval.global_batch_size = 5
    config.data.sources.robot.eval_split = ""  # left out of evaluation
    with pytest.raises(RuntimeError, match="skip_unreadable=True"):
        list(mixture.build_mixture(config, split="val", progress=False))
    config.data.skip_unreadable = True
    mix = mixture.build_mixture(config, split="val", progress=False)
    batches = list(mix)
    assert sum(int(b["valid"].sum()) for b in batches) == 4
    assert mix.counters()["unreadable_images"] == 1


def test_capped_eval_stream_leaves_no_partial_cache_warning(data_dirs):
    # A subprocess with TensorFlow's warnings on (this test session silences them).
    import subprocess
    import sys

    code = (
        "import sys; sys.path[:0] = ['tests', '.']\n"
        "import data_fixtures as fx\n"
        "from data_pipelines import mixture\n"
        f"c = fx.data_config({data_dirs['robot']!r}, {data_dirs['vqa']!r})\n"
        "c.max_prompt_len = 32\n"
        "c.data.eval.max_examples_per_source = 2\n"
        "for _ in range(2):\n"
        "    n = sum(int(b['valid'].sum()) for b in mixture.build_mixture(c, split='val',"
        " progress=False))\n"
        "    assert n == 4, n\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "did not fully read the dataset being cached" not in out.stderr


def _truncated_fractal(data_dir, keep: float) -> str:
    """6 episodes in one shard, the shard cut to `keep` of its bytes."""
    import glob

    robot_dir = fx.write_fake_fractal(data_dir, name="truncated", lengths=(3,) * 6,
                                      image_shape=(8, 8, 3))
    (shard,) = glob.glob(os.path.join(robot_dir, "*train.tfrecord*"))
    with open(shard, "r+b") as f:
        f.truncate(int(os.path.getsize(shard) * keep))
    return robot_dir


def test_truncated_shard_is_skipped_not_spun_on(small_dirs, tmp_path, caplog):
    # Half the shard is gone: with skip_unreadable the readable episodes flow (the loss is
    # counted and logged once); without it, a clear error. Before, skipping spun forever on
    # "Input dataset was expected to contain 6 elements" without yielding a batch.
    config = _config({"robot": _truncated_fractal(tmp_path / "half", 0.5),
                      "vqa": small_dirs["vqa"]}, batch=4, image_size=8)
    config.data.cache_dir = str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match=r"skip_unreadable=True"):
        next(mixture.build_mixture(config, progress=False))
    config.data.skip_unreadable = True
    with caplog.at_level("WARNING"):
        mix = mixture.build_mixture(config, progress=False)
    sources = np.concatenate([next(mix)["source"] for _ in range(6)])
    assert set(sources.tolist()) == {0, 1}
    lost = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(lost) == 1 and "3 of 6 episodes" in lost[0]
    # Nothing readable: a message, not a spin.
    config.data.sources.robot.builder_dir = _truncated_fractal(tmp_path / "none", 0.01)
    with pytest.raises(ValueError, match="no episode could be read"):
        next(mixture.build_mixture(config, progress=False))


def test_inspect_report(data_dirs, tmp_path):
    from data_pipelines import inspect as inspect_lib

    grid = str(tmp_path / "grid.png")
    report = inspect_lib.inspect(_config(data_dirs), "train", 3, 4, grid)
    assert report["shapes"]["image"] == ["uint8", [8, 32, 32, 3]]
    assert sum(s["count"] for s in report["sources"].values()) == 24
    robot_rows = [e for e in report["examples"] if "action_bins" in e]
    for example in robot_rows:
        assert len(example["action_bins"]) == 8 and len(example["action_robot_units"]) == 8
    assert os.path.getsize(grid) > 0 and set(report["counters"]) == set(stats.COUNTER_NAMES)


def test_tiny_config_has_data_block():
    from configs import tiny

    data = tiny.get_config().data
    assert sorted(data.sources) == ["captions", "robot", "vqa"]
    assert data.sources.robot.mapping.image == "steps/observation/image"
    assert sum(s.weight for s in data.sources.values()) == pytest.approx(1.0)
