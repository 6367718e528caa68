"""Several robot datasets in one mixture: each is binned with its own action bounds, the mixture
keeps the configured fractions, and the export / Policy un-normalize with a chosen dataset's."""

import data_fixtures as fx
import numpy as np
import pytest
from test_policy import random_params

from configs import tiny
from data_pipelines import config as data_config
from data_pipelines import mixture
from rt2_jax import actions as actions_lib
from rt2_jax import checkpoints
from rt2_jax import policy as policy_lib
from rt2_jax import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def two_robots(tmp_path_factory):
    """The same fractal-schema episodes twice, the second robot's deltas 10x larger."""
    root = tmp_path_factory.mktemp("robots")
    lengths = (5,) * 12
    return {"small": fx.write_fake_fractal(root, name="small_robot", lengths=lengths,
                                           image_shape=(8, 8, 3)),
            "large": fx.write_fake_fractal(root, name="large_robot", lengths=lengths,
                                           image_shape=(8, 8, 3), action_scale=10.0),
            "vqa": fx.write_fake_vqa(root, name="robots_vqa", num_examples=40,
                                     image_shape=(8, 8, 3))}


def two_robot_config(dirs, *, bounds="min_max", batch=16):
    config = fx.data_config(dirs["small"], dirs["vqa"], batch=batch, image_size=8,
                            shuffle_buffer=64)
    config.max_prompt_len = 32
    config.actions.bounds = bounds
    config.data.augment.enabled = False
    config.data.sources["small"] = data_config.robot_source(
        weight=0.3, builder_dir=dirs["small"], train_split="train", eval_split="train")
    del config.data.sources["robot"]
    config.data.sources["large"] = data_config.robot_source(
        weight=0.5, builder_dir=dirs["large"], train_split="train", eval_split="train")
    config.data.sources["vqa"].weight = 0.2
    config.data.eval.global_batch_size = batch
    return config


def test_each_robot_dataset_is_binned_with_its_own_bounds(two_robots):
    mix = mixture.build_mixture(two_robot_config(two_robots), split="val", progress=False)
    small, large = mix.dataset_bounds["small"], mix.dataset_bounds["large"]
    # min_max bounds: the large robot's position and rotation ranges are 10x the small one's.
    np.testing.assert_allclose(np.array(large.high[:6]), 10 * np.array(small.high[:6]),
                               rtol=1e-5)
    names = list(mix.source_names)
    checked = {"small": 0, "large": 0}
    for batch in mix:
        for row in np.flatnonzero(batch["is_robot"] & batch["valid"]):
            name = names[batch["source"][row]]
            tok = mix.dataset_tokenizers[name]
            bins = tok.token_ids_to_bins(batch["decoder_tokens"][row, :actions_lib.NUM_DIMS])
            decoded, raw = tok.decode(bins), batch["action_raw"][row]
            half_bin = tok.bounds.bin_width() / 2
            assert decoded[0] == raw[0]
            # Half a bin, plus float32 rounding (dims the data never moves have bins of ~1e-6).
            slack = half_bin * (1 + 1e-4) + 4 * np.finfo(np.float32).eps * np.abs(raw[1:])
            assert np.all(np.abs(decoded[1:] - raw[1:]) <= slack), name
            checked[name] += 1
    assert checked["small"] >= 50 and checked["large"] >= 50


def test_fractions_of_two_robots_and_the_web_match_the_weights(two_robots):
    mix = mixture.build_mixture(two_robot_config(two_robots, batch=500), progress=False)
    sources = np.concatenate([next(mix)["source"] for _ in range(20)])
    assert sources.size == 10_000
    names = list(mix.source_names)
    for name, weight in (("small", 0.3), ("large", 0.5), ("vqa", 0.2)):
        share = float(np.mean(sources == names.index(name)))
        assert abs(share - weight) < 0.02, (name, share)


def test_export_policy_returns_actions_in_the_chosen_robots_units(tmp_path):
    config = tiny.get_config()
    small = actions_lib.ActionBounds(tuple([-0.1] * 6 + [0.0]), tuple([0.1] * 6 + [1.0]))
    large = actions_lib.ActionBounds(tuple([-1.0] * 6 + [0.0]), tuple([1.0] * 6 + [10.0]))
    datasets = {"small": {"bounds": small.to_json_dict(), "stats": None},
                "large": {"bounds": large.to_json_dict(), "stats": None}}
    out = str(tmp_path / "export")
    checkpoints.export(out, random_params(config, seed=5), config,
                       tokenizer_lib.default_model_path(), None, small, step=3,
                       datasets=datasets, default_dataset="small")
    with pytest.raises(ValueError, match=r"2 robot datasets \['large', 'small'\]"):
        policy_lib.Policy.from_export(out)
    with pytest.raises(ValueError, match=r"'medium'.*\['large', 'small'\]"):
        policy_lib.Policy.from_export(out, dataset="medium")
    p_small = policy_lib.Policy.from_export(out, dataset="small")
    p_large = policy_lib.Policy.from_export(out, dataset="large")
    assert (p_small.dataset, p_large.dataset) == ("small", "large")
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
    a = p_small.predict([image], ["pick up the red block"])
    b = p_large.predict([image], ["pick up the red block"])
    np.testing.assert_array_equal(a["bins"], b["bins"])            # the same decoded tokens
    np.testing.assert_allclose(b["action"][0, 1:], 10 * a["action"][0, 1:], rtol=1e-5)
    assert np.all(np.abs(b["action"][0, 1:7]) <= 1.0) and np.all(np.abs(a["action"][0, 1:7]) <= 0.1)


def test_a_single_robot_export_needs_no_dataset_name(tmp_path):
    config = tiny.get_config()
    bounds = actions_lib.ActionBounds(tuple([-0.1] * 7), tuple([0.1] * 7))
    out = str(tmp_path / "export")
    checkpoints.export(out, random_params(config), config, tokenizer_lib.default_model_path(),
                       None, bounds, datasets={"robot": {"bounds": bounds.to_json_dict(),
                                                         "stats": None}},
                       default_dataset="robot")
    assert policy_lib.Policy.from_export(out).dataset == "robot"
    with pytest.raises(ValueError, match=r"choose one of \['robot'\]"):
        policy_lib.Policy.from_export(out, dataset="other")


def test_inspect_shows_each_robots_bounds(two_robots, tmp_path, capsys):
    from data_pipelines import inspect as inspect_lib

    report = inspect_lib.inspect(two_robot_config(two_robots), "train", 2, 6,
                                 str(tmp_path / "grid.png"))
    assert set(report["dataset_bounds"]) == {"small", "large"}
    for example in report["examples"]:
        if "action_robot_units" in example:   # decoded with the row's own dataset's bounds
            bounds = report["dataset_bounds"][example["source"]]
            assert np.all(np.array(example["action_robot_units"][1:7])
                          <= np.array(bounds["high"][:6]) + 1e-6)
    # min_max bounds clip nothing; the small robot's range as fixed bounds for both clips
    # nothing of the small robot and most of the large one (10x its range).
    for name in ("small", "large"):
        clipping = report["dataset_clipping"][name]
        assert clipping["actions"] > 0 and clipping["clipped_values"] == 0
    inspect_lib.print_text(report)
    out = capsys.readouterr().out
    assert "action bounds per robot dataset" in out and "large" in out
    assert "clipped to those bounds" in out
    config = two_robot_config(two_robots, bounds="fixed")
    small = report["dataset_bounds"]["small"]
    config.actions.fixed_low, config.actions.fixed_high = small["low"], small["high"]
    shared = inspect_lib.inspect(config, "train", 2, 6, str(tmp_path / "grid.png"))
    assert shared["dataset_clipping"]["small"]["clipped_values"] == 0
    assert shared["dataset_clipping"]["large"]["clipped_share"]["dx"] > 0.5


def test_dims_a_dataset_does_not_record_get_the_neutral_bin_and_no_loss(two_robots):
    """The large robot declares rotation and terminate absent: its targets there are the bin of
    0 with loss mask 0; the small robot's rows keep every dim."""
    config = two_robot_config(two_robots, batch=64)
    config.data.sources["large"].mapping.rotation = "absent"
    config.data.sources["large"].mapping.terminate = "absent"
    mix = mixture.build_mixture(config, progress=False)
    names = list(mix.source_names)
    batch = next(mix)
    absent = [0, 4, 5, 6]
    large_rows = np.flatnonzero(batch["source"] == names.index("large"))
    small_rows = np.flatnonzero(batch["source"] == names.index("small"))
    assert large_rows.size and small_rows.size
    mask = batch["decoder_loss_mask"]
    np.testing.assert_array_equal(mask[np.ix_(large_rows, absent)], 0.0)
    np.testing.assert_array_equal(mask[np.ix_(large_rows, [1, 2, 3, 7, 8])], 1.0)
    np.testing.assert_array_equal(mask[small_rows, :9], 1.0)
    tok = mix.dataset_tokenizers["large"]
    neutral = tok.encode(np.zeros(8, np.float32))
    for row in large_rows:
        bins = tok.token_ids_to_bins(batch["decoder_tokens"][row, :8])
        np.testing.assert_array_equal(bins[absent], neutral[absent])


def test_action_metrics_skip_dims_a_dataset_does_not_record():
    import jax.numpy as jnp

    from rt2_jax import train_state

    tok = tokenizer_lib.Tokenizer()
    bounds = actions_lib.ActionBounds(tuple([-1.0] * 7), tuple([1.0] * 7))
    action_tok = actions_lib.ActionTokenizer(bounds, tok, "integers")
    vocab = tok.vocab_size
    tables = train_state.ActionTables.build(action_tok, vocab)
    actions = np.array([[0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        [1, -0.1, -0.2, -0.3, 0.0, 0.0, 0.0, 0.2]], np.float32)
    targets = np.stack([action_tok.target_token_ids(a[None])[0] for a in actions])
    mask = np.ones(targets.shape, np.float32)
    mask[1, 4:7] = 0.0                      # row 1's dataset records no rotation
    pred = targets.copy()
    pred[1, 4:7] = action_tok.bins_to_token_ids(np.array([0, 9, 0, 0, 255, 255, 255, 0]))[4:7]
    logits = jnp.asarray(np.eye(vocab, dtype=np.float32)[pred] * 10.0)
    batch = {"decoder_tokens": jnp.asarray(targets), "decoder_loss_mask": jnp.asarray(mask),
             "source": jnp.zeros(2, jnp.int32), "is_robot": jnp.ones(2, bool),
             "action": jnp.asarray(actions)}
    sums = train_state.compute_metrics(logits, batch, 1, tables, 0.0)
    out = train_state.summarize({k: np.asarray(v) for k, v in sums.items()}, ("robot",))
    assert out["action_acc"] == 1.0 and out["action_exact"] == 1.0   # wrong only where absent
    assert out["action_acc/droll"] == 1.0                            # row 0 alone counts there
    assert float(np.asarray(sums["action_dims"])[4]) == 1.0


def test_robot_weights_scaled_by_dataset_size_keep_the_robot_share(two_robots, tmp_path):
    short = fx.write_fake_fractal(tmp_path, name="short_robot", lengths=(5,) * 4,
                                  image_shape=(8, 8, 3))
    config = two_robot_config(two_robots)
    config.data.sources["large"].builder_dir = short     # 20 steps vs the small robot's 59
    config.data.sources["small"].weight = 0.4
    config.data.sources["large"].weight = 0.4
    config.data.weight_robots_by_size = True
    mix = mixture.build_mixture(config, progress=False)
    weights = dict(zip(mix.source_names, mix.weights, strict=True))
    steps = {name: mix.all_action_stats[name]["num_steps"] for name in ("small", "large")}
    assert steps == {"small": 59, "large": 20}   # one of the small robot's steps is NaN
    assert weights["small"] == pytest.approx(59 / 20 * weights["large"])
    assert weights["small"] + weights["large"] == pytest.approx(0.8 / 1.0)
    assert weights["vqa"] == pytest.approx(0.2)
