"""The localization loss: pointing answers parsed like the scorer parses them, points followed
through crop and resize (checked against the pixels), the loss in the train step (against a
second forward pass, and with gradient accumulation), the mixture's keys, bad configs."""

import data_fixtures
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import tiny
from data_pipelines import images, mixture, web
from rt2_jax import localization, train_state
from rt2_jax.sim import vqa


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="0123456789 \t-+.xa", max_size=12))
def test_point_answers_parse_exactly_as_the_pointing_scorer_reads_them(text):
    point, ok = web.parse_point(tf.constant(text))
    reference = vqa.parse_location(text)       # table point: (x, 1 - y) of the image's
    assert bool(ok) == (reference is not None), text
    if reference is None:
        assert not point.numpy().any()
    else:
        np.testing.assert_allclose(point.numpy(), [reference[0], 1.0 - reference[1]],
                                   atol=1e-6)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 300).map(str) | st.sampled_from(["x", "-1", "007", "1.5"]),
                max_size=7).map(" ".join), st.integers(1, 3))
def test_multi_point_answers_parse_exactly_as_the_pointing_scorer_reads_them(text, max_points):
    points, given_ = web.parse_points(tf.constant(text), max_points)
    reference = vqa.parse_locations(text)
    if reference is None or len(reference) > max_points:
        assert not given_.numpy().any() and not points.numpy().any(), text
        return
    n = len(reference)
    np.testing.assert_array_equal(given_.numpy(), np.arange(max_points) < n)
    np.testing.assert_allclose(points.numpy()[:n], np.stack(
        [reference[:, 0], 1.0 - reference[:, 1]], -1), atol=1e-6)
    assert not points.numpy()[n:].any()


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_a_table_point_written_as_an_answer_comes_back_within_half_a_cell(x, y):
    point, ok = web.parse_point(tf.constant(vqa.location_answer((x, y))))
    assert bool(ok)
    # Image (x from the left, y from the top) of the fixed camera, which shows the table.
    np.testing.assert_allclose(point.numpy(), [x, 1.0 - y], atol=0.5 / 256 + 1e-6)


def _data_config(aspect, augment):
    return ml_collections.ConfigDict(dict(
        image_aspect=aspect,
        augment=dict(enabled=augment, crop_scale_min=0.5, crop_ratio_min=0.75,
                     crop_ratio_max=4 / 3, brightness=0.0, contrast=0.0)))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["squash", "pad", "center_crop"]), st.booleans(),
       st.integers(24, 96), st.integers(24, 96), st.floats(0.1, 0.9), st.floats(0.1, 0.9),
       st.integers(0, 2**30))
def test_the_point_follows_the_crop_and_resize_to_where_the_pixels_go(aspect, augment, h, w,
                                                                      fx, fy, seed):
    # A bright 5x5 dot on black: wherever the pipeline moves the image, the returned point must
    # be where the dot ends up (its brightness-weighted centre in the output).
    cy, cx = int(fy * (h - 6)) + 3, int(fx * (w - 6)) + 3
    image = np.zeros((h, w, 3), np.uint8)
    image[cy - 2:cy + 3, cx - 2:cx + 3] = 255
    point = tf.constant([(cx + 0.5) / w, (cy + 0.5) / h], tf.float32)
    size = 32
    data = _data_config(aspect, augment)
    out, uv, in_view = images.prepare_image_and_point(
        tf.constant(image), point, tf.constant([seed, 7], tf.int64), data, size, train=True)
    plain = images.prepare_image(tf.constant(image), tf.constant([seed, 7], tf.int64), data,
                                 size, train=True)
    np.testing.assert_array_equal(out.numpy(), plain.numpy())   # the image is unchanged
    gray = out.numpy().astype(np.float64).mean(-1)
    if not bool(in_view):
        return
    u, v = uv.numpy()
    col, row = (u + 1) / 2 * size, (1 - v) / 2 * size           # pixel coordinates
    corners_in_view = [bool(images.prepare_image_and_point(
        tf.constant(image), tf.constant([(cx + dx) / w, (cy + dy) / h], tf.float32),
        tf.constant([seed, 7], tf.int64), data, size, train=True)[2])
        for dx in (-2.5, 3.5) for dy in (-2.5, 3.5)]
    if not all(corners_in_view) or gray.max() < 64:
        return   # the dot is cut by a crop (its centre of mass moves) or resized away
    weights = np.where(gray > 0.25 * gray.max(), gray, 0.0)
    rows, cols = np.mgrid[:size, :size] + 0.5
    centre = np.array([(weights * cols).sum(), (weights * rows).sum()]) / weights.sum()
    np.testing.assert_allclose(centre, [col, row], atol=1.0)


def _locate_config(**train):
    c = tiny.get_config()
    c.model.vit.keypoints = 4
    c.model.vit.keypoint_query = True
    c.max_target_len = 16
    c.data.global_batch_size = 8
    c.train.update(dict(optimizer="adamw", grad_clip_norm=0.0, z_loss=0.0, locate_weight=2.0))
    c.train.update(train)
    return c


def _batch(c, rng, points=1):
    batch = data_fixtures.synthetic_text_batch(c, rng)
    batch["locate_uv"] = rng.uniform(-0.9, 0.9, (len(batch["source"]), points, 2)).astype(
        np.float32)
    # Three points 0 in the first half of the batch, one in the second: micro-batches of
    # unequal point counts (and, with two points, one row with its second point too).
    mask = np.zeros((8, points), np.float32)
    mask[[0, 1, 2, 6], 0] = 1
    if points > 1:
        mask[1, 1] = 1
    batch["locate_mask"] = mask
    return batch


@pytest.mark.parametrize("points", [1, 2])
def test_the_train_step_regresses_keypoint_zero_and_accumulation_matches_one_batch(points):
    rng = np.random.default_rng(0)
    configs = {"one": _locate_config(locate_points=points),
               "accum": _locate_config(grad_accum_steps=2, locate_points=points),
               "off": _locate_config(locate_weight=0.0)}
    batch = _batch(configs["one"], rng, points)
    tables = train_state.ActionTables(np.full(1024, -1, np.int32), np.ones((8, 1024), bool))
    params, grad_norms, metrics = {}, {}, {}
    for name, c in configs.items():
        setup = train_state.make_setup(c)
        assert ("locate_uv" in setup.batch_sharding) == (name != "off")
        step = train_state.make_train_step(setup, tables, num_sources=3)
        state = train_state.init_state(setup, 0)
        if name == "one":
            # An independent reading of keypoints 0..P-1: the encoder alone, same parameters.
            _, sown = setup.model.apply(
                {"params": state.params}, batch["image"], batch["encoder_tokens"],
                batch["encoder_mask"], method="encode", mutable=["intermediates"])
            kp = np.asarray(sown["intermediates"]["img"]["keypoints"][0][:, :points],
                            np.float64)
        fed = {k: v for k, v in batch.items() if k in setup.batch_sharding}
        state, m = step(state, fed)
        params[name] = jax.tree.map(np.asarray, state.params)
        grad_norms[name], metrics[name] = float(m["grad_norm"]), jax.tree.map(np.asarray, m)
    sq = ((kp - batch["locate_uv"]) ** 2).sum(-1)
    np.testing.assert_allclose(metrics["one"]["locate_sq_sum"],
                               (sq * batch["locate_mask"]).sum(), rtol=1e-4)
    count = batch["locate_mask"].sum()
    assert metrics["one"]["locate_count"] == count == 4 + (points > 1)
    summary = train_state.summarize(metrics["one"], ("a", "b", "c"))
    np.testing.assert_allclose(summary["locate_dist"],
                               (np.sqrt(sq) / 2 * batch["locate_mask"]).sum() / count,
                               rtol=1e-4)
    assert "locate_sq_sum" not in metrics["off"] and "locate_dist" not in train_state.summarize(
        metrics["off"], ("a", "b", "c"))
    # The loss adds a gradient (through the image tower) ...
    assert abs(grad_norms["one"] - grad_norms["off"]) > 1e-3 * grad_norms["off"]
    # ... and accumulating two micro-batches of 3 and 1 points gives one batch's gradient.
    np.testing.assert_allclose(grad_norms["accum"], grad_norms["one"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4),
                 params["accum"], params["one"])


def test_bad_localization_configs_are_explained():
    c = _locate_config()
    c.model.vit.keypoints = 0
    with pytest.raises(ValueError, match="keypoints >= 1"):
        localization.weight(c)
    c = _locate_config(locate_weight=-1.0)
    with pytest.raises(ValueError, match="locate_weight must be >= 0"):
        localization.weight(c)
    c = _locate_config()
    c.data.sources.vqa.locate_answers = False
    with pytest.raises(ValueError, match="locate_answers=True"):
        localization.weight(c)
    c = _locate_config()
    c.model.wrist_camera = "tokens"
    with pytest.raises(ValueError, match="wrist camera"):
        localization.weight(c)
    assert localization.weight(_locate_config(locate_weight=0.0)) == 0.0
    for points in (0, 5):    # point p trains keypoint p: 1..keypoints (4 here)
        with pytest.raises(ValueError, match="locate_points"):
            localization.weight(_locate_config(locate_points=points))


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from data_pipelines.builders import toy_world

    cache = str(tmp_path_factory.mktemp("toy_cache"))
    toy_world.ensure_toy_world(cache, episodes=6, vqa_scenes=24, seed=0)
    return cache


def test_the_mixture_carries_each_pointing_answers_point_and_nothing_else(toy_cache, tmp_path):
    c = _locate_config()
    c.data.toy_world.update(cache_dir=toy_cache, episodes=6, vqa_scenes=24)
    c.data.cache_dir = str(tmp_path)
    c.data.eval.max_examples_per_source = 0
    val = list(mixture.build_mixture(c, split="val", progress=False))
    points = 0
    for b in val:
        assert b["locate_uv"].shape == (len(b["valid"]), 1, 2)
        assert b["locate_mask"].shape == (len(b["valid"]), 1)
        assert b["locate_mask"].dtype == np.float32
        for row in np.flatnonzero(b["valid"]):
            answer = b["answers"][row][0].decode()
            reference = vqa.parse_location(answer) if not b["is_robot"][row] else None
            is_vqa = b["source"][row] == 2      # sources by name: captions, robot, vqa
            if reference is None or not is_vqa:
                assert b["locate_mask"][row, 0] == 0, answer
                continue
            points += 1
            # No augmentation on eval data and the toy images are square: the point is the
            # answer's, in keypoint coordinates (u right, v up).
            assert b["locate_mask"][row, 0] == 1
            np.testing.assert_allclose(b["locate_uv"][row, 0], 2 * reference - 1, atol=1e-5)
    assert points >= 4
    train = next(mixture.build_mixture(c, progress=False))
    assert set(localization.BATCH_KEYS) <= set(train)
    assert not train["locate_mask"][train["is_robot"]].any()
    assert np.abs(train["locate_uv"][train["locate_mask"] > 0]).max() <= 1.0


def test_two_point_answers_train_keypoints_zero_and_one(tmp_path):
    # Object-and-card questions ("x1 y1 x2 y2") carry both points; one-point answers only
    # point 0, so keypoint 1 learns from the pairs alone.
    from data_pipelines.builders import toy_world

    cache = str(tmp_path / "cache")
    toy_world.ensure_toy_world(cache, episodes=6, vqa_scenes=60, seed=0,
                               locate_pairs_per_scene=2)
    c = _locate_config(locate_points=2)
    c.data.toy_world.update(cache_dir=cache, episodes=6, vqa_scenes=60,
                            locate_pairs_per_scene=2)
    c.data.cache_dir = str(tmp_path)
    c.data.eval.max_examples_per_source = 0
    counts = {1: 0, 2: 0}
    for b in mixture.build_mixture(c, split="val", progress=False):
        assert b["locate_uv"].shape == (len(b["valid"]), 2, 2)
        for row in np.flatnonzero(b["valid"] & (b["source"] == 2)):
            reference = vqa.parse_locations(b["answers"][row][0].decode())
            if reference is None:
                assert not b["locate_mask"][row].any()
                continue
            n = len(reference)
            counts[n] += 1
            np.testing.assert_array_equal(b["locate_mask"][row], np.arange(2) < n)
            np.testing.assert_allclose(b["locate_uv"][row, :n], 2 * reference - 1, atol=1e-5)
            assert not b["locate_uv"][row, n:].any()
    assert counts[1] >= 4 and counts[2] >= 4, counts


def test_locate_exclude_leaves_the_rows_it_matches_to_their_text_answer(toy_cache, tmp_path):
    from rt2_jax import tokenizer as tokenizer_lib

    def val_batches(exclude):
        c = _locate_config()
        c.data.toy_world.update(cache_dir=toy_cache, episodes=6, vqa_scenes=24)
        c.data.cache_dir = str(tmp_path)
        c.data.eval.max_examples_per_source = 0
        c.data.sources.vqa.locate_exclude = exclude
        return list(mixture.build_mixture(c, split="val", progress=False))

    tok = tokenizer_lib.Tokenizer()
    kept = dropped = 0
    for plain, excluded in zip(val_batches(""), val_batches("gripper|card"), strict=True):
        np.testing.assert_array_equal(plain["encoder_tokens"], excluded["encoder_tokens"])
        for row in np.flatnonzero(plain["valid"]):
            prompt = tok.decode(plain["encoder_tokens"][row])
            if "gripper" in prompt or "card" in prompt:
                assert excluded["locate_mask"][row, 0] == 0, prompt
                dropped += plain["locate_mask"][row, 0] == 1
            else:
                assert excluded["locate_mask"][row, 0] == plain["locate_mask"][row, 0], prompt
                kept += plain["locate_mask"][row, 0] == 1
    assert dropped >= 1 and kept >= 1
    with pytest.raises(ValueError, match="locate_exclude"):
        val_batches("(unclosed")


def test_keypoints_of_a_model_without_them_are_a_clear_error():
    with pytest.raises(ValueError, match="no image keypoints"):
        localization.keypoints({"intermediates": {"img": {}}})
    kp = jnp.zeros((2, 3, 2))
    assert localization.keypoints({"intermediates": {"img": {"keypoints": (kp,)}}}) is kp
