"""The optional wrist camera (`config.model.wrist_camera`): a mixture of a robot with a wrist
camera (berkeley_autolab_ur5's schema), one without (fractal's) and web data yields the right
batches in both modes; the model's encoder input grows by the wrist tokens and a flag; the
policy of an export trained with a wrist camera needs the wrist image."""

import data_fixtures as fx
import jax
import numpy as np
import pytest
from test_policy import random_params

from configs import tiny
from data_pipelines import config as data_config
from data_pipelines import mixture
from rt2_jax import actions as actions_lib
from rt2_jax import checkpoints, evaluation, preprocessing, serve, train_state
from rt2_jax import policy as policy_lib
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.models import vit
from rt2_jax.models.vlm import VLM

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


def test_the_policy_prepares_cameras_as_the_pipeline_does(dirs):
    """Raw ur5 / fractal observations through the pipeline and through Policy.prepare_cameras
    (the robot side) give the same model inputs, in both modes."""
    raw_main = {name: np.zeros((12, 16, 3), np.uint8) for name in (UR5, FRACTAL)}
    for name in raw_main:
        raw_main[name][..., 0] = fx.MAIN_RED[name]   # step 0: green channel 0
    raw_wrist = {UR5: np.full((8, 8, 3), fx.WRIST_GREY[UR5], np.uint8), FRACTAL: policy_lib.ABSENT}
    for mode in preprocessing.WRIST_MODES:
        config = wrist_config(dirs, mode, aspect="pad")
        rows = val_rows(config)
        tok = tokenizer_lib.Tokenizer(None)
        bounds = actions_lib.ActionBounds(tuple([-1.0] * 7), tuple([1.0] * 7))
        policy = policy_lib.Policy(None, config, actions_lib.ActionTokenizer(bounds, tok))
        for name in (UR5, FRACTAL):
            pixels, wrist = policy.prepare_cameras([raw_main[name]], [raw_wrist[name]])
            image, wrist_image, present = rows[name][0]     # episode 0, step 0
            assert np.abs(pixels[0].astype(int) - image).max() <= 1, (mode, name)
            assert bool(wrist["wrist_present"][0]) == present == (name == UR5)
            if mode == "tokens":
                assert np.abs(wrist["wrist_image"][0].astype(int) - wrist_image).max() <= 1
            else:
                assert set(wrist) == {"wrist_present"}


@pytest.mark.parametrize("mode", ["", "side_by_side", "tokens"])
def test_encoder_input_holds_the_wrist_tokens_and_the_flag(mode):
    config = tiny.get_config()
    config.model.wrist_camera = mode
    model = VLM.from_config(config)
    params = random_params(config)
    n = vit.num_tokens(config.model.vit, config.image_size)   # 64 at 64 px / patch 8
    extra = {"": 0, "side_by_side": 1, "tokens": n + 1}[mode]
    assert {k for k in params if k.startswith("wrist_")} == {
        "": set(), "side_by_side": {"wrist_flag"},
        "tokens": {"wrist_flag", "wrist_embedding"}}[mode]
    rng = np.random.default_rng(0)
    size, length = config.image_size, config.max_prompt_len
    image = rng.integers(0, 256, (2, size, size, 3), np.uint8)
    tokens = np.ones((2, length), np.int32)
    mask = np.ones((2, length), bool)
    present = np.array([True, False])
    wrist = {"tokens": {"wrist_image": image[::-1], "wrist_present": present},
             "side_by_side": {"wrist_present": present}, "": None}[mode]
    encoded, enc_mask = model.apply({"params": params}, image, tokens, mask, wrist=wrist,
                                    method=VLM.encode)
    assert encoded.shape == (2, n + extra + length, config.model.encdec.d_model)
    assert enc_mask.shape == encoded.shape[:2]
    if mode == "tokens":   # an absent wrist camera's tokens are not read; the flag always is
        np.testing.assert_array_equal(enc_mask[:, n:2 * n], [[True] * n, [False] * n])
        assert enc_mask[:, 2 * n].all()
    if mode:
        # The flag token is the row's flag embedding: present and absent differ.
        flags = np.asarray(params["wrist_flag"])
        assert not np.allclose(flags[0], flags[1])
        with pytest.raises(ValueError, match=r"wrist_camera=.*needs wrist inputs.*missing"):
            model.apply({"params": params}, image, tokens, mask, method=VLM.encode)
    else:
        with pytest.raises(ValueError, match="has no wrist camera"):
            model.apply({"params": params}, image, tokens, mask,
                        wrist={"wrist_present": present}, method=VLM.encode)


def test_a_training_step_learns_the_wrist_parameters():
    """The train step (train_state) takes the wrist keys of the batch; the flag, the wrist
    marker and the ViT move. The setup's batch keys include them (what rt2_jax.train feeds)."""
    config = tiny.get_config()
    config.model.wrist_camera = "tokens"
    config.data.global_batch_size = 2
    config.train.optimizer, config.train.warmup_steps = "adamw", 0
    setup = train_state.make_setup(config)
    assert set(setup.batch_sharding) == {*train_state.MODEL_KEYS, "wrist_image", "wrist_present"}
    rng = np.random.default_rng(0)
    batch = {k: np.zeros(s.shape, s.dtype) for k, s in train_state.batch_spec(config, 2).items()}
    batch.update(image=rng.integers(0, 256, batch["image"].shape, np.uint8),
                 wrist_image=rng.integers(0, 256, batch["wrist_image"].shape, np.uint8),
                 wrist_present=np.array([True, False]),
                 decoder_tokens=rng.integers(3, 500, batch["decoder_tokens"].shape, np.int32),
                 decoder_loss_mask=np.ones(batch["decoder_loss_mask"].shape, np.float32))
    tables = train_state.ActionTables(np.full(1024, -1, np.int32), np.ones((8, 1024), bool))
    step = train_state.make_train_step(setup, tables, num_sources=1)
    state = train_state.init_state(setup, 0)
    before = jax.tree.map(np.array, state.params)   # copies: the step donates the state
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["grad_norm"]))
    for key in ("wrist_flag", "wrist_embedding"):
        assert not np.allclose(np.asarray(state.params[key]), before[key]), key
    # Both flag rows were used (one row present, one absent).
    assert not np.allclose(np.asarray(state.params["wrist_flag"])[0], before["wrist_flag"][0])
    assert not np.allclose(np.asarray(state.params["wrist_flag"])[1], before["wrist_flag"][1])


@pytest.fixture(scope="module")
def wrist_export(tmp_path_factory):
    config = tiny.get_config()
    config.model.wrist_camera = "tokens"
    bounds = actions_lib.ActionBounds(tuple([-0.1] * 6 + [-1.0]), tuple([0.1] * 6 + [1.0]))
    out = str(tmp_path_factory.mktemp("wrist_export") / "export")
    checkpoints.export(out, random_params(config, seed=3), config,
                       tokenizer_lib.default_model_path(), None, bounds)
    return out


def test_policy_of_a_wrist_camera_export_needs_the_wrist_image(wrist_export):
    policy = policy_lib.Policy.from_export(wrist_export)
    assert policy.wrist_camera == "tokens"
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 60, 3), np.uint8)
    wrist = rng.integers(0, 256, (30, 30, 3), np.uint8)
    action = policy.act(image, "pick up the red block", wrist_image=wrist)
    assert action.shape == (8,) and action.dtype == np.float32 and action[0] in (0.0, 1.0)
    assert np.all(np.abs(action[1:7]) <= 0.1 + 1e-6)
    batch = policy.act_batch([image, image], ["pick", "place"], wrist_images=[wrist, "absent"])
    assert batch.shape == (2, 8)
    with pytest.raises(ValueError, match=r"trained with a wrist camera.*wrist_image="):
        policy.act(image, "pick up the red block")
    with pytest.raises(ValueError, match=r"got 2 images but 1 wrist images"):
        policy.act_batch([image, image], ["a", "b"], wrist_images=[wrist])
    with pytest.raises(ValueError, match=r"wrist image None.*ABSENT"):
        policy.act_batch([image], ["a"], wrist_images=[None])
    with pytest.raises(ValueError, match=r"prepare\(\) builds single-camera inputs"):
        policy.prepare(image, "pick")
    assert len(policy.answer([image], ["what is on the table?"])) == 1   # web rows: absent
    with pytest.raises(ValueError, match=r"cannot serve it yet.*wrist_image="):
        serve.PolicyServer(policy)


def test_policy_without_a_wrist_camera_refuses_one(tmp_path):
    config = tiny.get_config()
    bounds = actions_lib.ActionBounds(tuple([-0.1] * 7), tuple([0.1] * 7))
    out = str(tmp_path / "export")
    checkpoints.export(out, random_params(config), config, tokenizer_lib.default_model_path(),
                       None, bounds)
    policy = policy_lib.Policy.from_export(out)
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="trained without a wrist camera"):
        policy.act(image, "pick", wrist_image=image)
    np.testing.assert_array_equal(policy.act(image, "pick"),
                                  policy.act(image, "pick", wrist_image=policy_lib.ABSENT))


def test_the_evaluator_decodes_with_the_wrist_camera(dirs):
    """The periodic evaluation feeds the eval batches' wrist inputs to the jitted decode loop:
    every robot row (both robots) and every VQA row is scored."""
    config = wrist_config(dirs, "tokens")
    config.eval.num_batches, config.eval.max_text_len = 0, 4
    setup = train_state.make_setup(config)
    evaluator = evaluation.Evaluator(config, setup, mixture.build_mixture(config, progress=False))
    results = evaluator.run(train_state.init_state(setup, 0).params)
    assert results["robot_examples"] == 7 + 5 and results["vqa_examples"] == 4
    assert 0.0 <= results["action_acc"] <= 1.0


def test_a_single_camera_export_starts_a_wrist_camera_model(tmp_path):
    """init_from a single-camera export: with init_from_regex the ViT and encoder-decoder load
    and the wrist parameters keep their initial values; without it the load names them."""
    plain = tiny.get_config()
    bounds = actions_lib.ActionBounds(tuple([-0.1] * 7), tuple([0.1] * 7))
    out = str(tmp_path / "plain")
    exported = random_params(plain, seed=7)
    checkpoints.export(out, exported, plain, tokenizer_lib.default_model_path(), None, bounds)
    wrist_config = tiny.get_config()
    wrist_config.model.wrist_camera = "tokens"
    fresh = jax.tree.map(jax.numpy.asarray, random_params(wrist_config, seed=8))
    with pytest.raises(ValueError, match=r"wrist_embedding: missing; wrist_flag: missing"):
        checkpoints.load_params_like(out, fresh)
    loaded = checkpoints.load_params_like(out, fresh, "^(img|encdec)/")
    np.testing.assert_array_equal(loaded["wrist_flag"], fresh["wrist_flag"])
    np.testing.assert_allclose(loaded["img"]["embedding"]["kernel"],
                               exported["img"]["embedding"]["kernel"], rtol=1e-2, atol=1e-2)
