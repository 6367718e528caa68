"""Training: learning, resume after kill -9, sharded == unsharded, multi-process, bad configs."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import data_fixtures
import jax
import numpy as np
import pytest

from configs import tiny
from rt2_jax import actions as actions_lib
from rt2_jax import evaluation, train_state
from rt2_jax import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """A small toy world shared by the tests of this module (generated once)."""
    from data_pipelines.builders import toy_world

    cache = str(tmp_path_factory.mktemp("toy_cache"))
    toy_world.ensure_toy_world(cache, episodes=16, vqa_scenes=40, seed=0)
    return cache


def small_config(cache: str, **train):
    c = tiny.get_config()
    c.data.toy_world.cache_dir = cache
    c.data.toy_world.episodes = 16
    c.data.toy_world.vqa_scenes = 40
    c.data.global_batch_size = 8
    c.data.shuffle_buffer = 64
    c.data.eval.max_examples_per_source = 8
    c.data.cache_dir = os.path.join(cache, "stats")
    c.max_target_len = 16
    c.train.update(dict(num_steps=40, warmup_steps=5, log_every=10, eval_every=0,
                        checkpoint_every=20, async_checkpoints=False))
    c.train.update(train)
    return c


def overrides(c) -> list[str]:
    """Command-line flags that reproduce small_config() in a subprocess."""
    flat = {
        "data.toy_world.cache_dir": c.data.toy_world.cache_dir,
        "data.toy_world.episodes": c.data.toy_world.episodes,
        "data.toy_world.vqa_scenes": c.data.toy_world.vqa_scenes,
        "data.global_batch_size": c.data.global_batch_size,
        "data.shuffle_buffer": c.data.shuffle_buffer,
        "data.eval.max_examples_per_source": c.data.eval.max_examples_per_source,
        "data.cache_dir": c.data.cache_dir, "max_target_len": c.max_target_len,
        **{f"train.{k}": v for k, v in c.train.items()},
    }
    return [f"--config.{k}={v}" for k, v in flat.items()]


def read_losses(workdir: str) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a resumed run's later lines win). A last line still
    being appended (no newline yet) is skipped."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if not line.endswith("\n"):
                continue
            row = json.loads(line)
            if "loss" in row:
                out[row["step"]] = row["loss"]
    return out


def run_train(workdir, c, extra_env=None, **popen):
    env = dict(os.environ, **(extra_env or {}))
    cmd = [sys.executable, "-m", "rt2_jax.train", "--config=configs/tiny.py",
           f"--workdir={workdir}", *overrides(c)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_forty_steps_lower_the_loss(toy_cache, tmp_path, monkeypatch):
    c = small_config(toy_cache, num_steps=40, log_every=10, eval_every=40, learning_rate=3e-3)
    monkeypatch.chdir(tmp_path.parent)
    last = train_lib.train(c, tmp_path.name)  # a relative workdir, as in the README's demo
    losses = read_losses(str(tmp_path))
    assert sorted(losses) == [10, 20, 30, 40]
    assert losses[40] < 0.8 * losses[10], losses
    assert 0.0 <= last["action_acc"] <= 1.0 and "loss/robot" in last
    assert "eval/action_acc" in last and "eval/vqa_exact_match" in last
    per_dim = [last[f"eval/action_acc/{d}"] for d in actions_lib.ACTION_DIMS]
    assert last["eval/action_acc"] == pytest.approx(np.mean(per_dim))
    assert "eval/action_l1/dx" in last and "eval/action_l1/terminate" not in last
    assert 0.0 <= last["data_wait_fraction"] <= 1.0
    assert os.listdir(tmp_path / "tensorboard")
    # Training to num_steps again is a no-op resume from the final checkpoint.
    again = train_lib.train(c, str(tmp_path))
    assert again == {}
    # Export: bf16 params equal to the checkpoint's, plus tokenizer, statistics and config.
    from rt2_jax import checkpoints, export

    out = str(tmp_path / "export")
    assert export.export_workdir(str(tmp_path), out) == 40
    params, config, stats = checkpoints.load_export(out)
    assert config.model.vocab_size == c.model.vocab_size
    assert stats["bounds"]["low"] and stats["mapping"] == "integers" and stats["step"] == 40
    assert list(stats["datasets"]) == [stats["default_dataset"]]   # one robot dataset
    assert stats["datasets"][stats["default_dataset"]]["bounds"] == stats["bounds"]
    setup = train_state.make_setup(c)
    state, _ = checkpoints.Checkpointer(str(tmp_path)).restore(40, setup.abstract_state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a), np.asarray(b.astype(np.asarray(a).dtype))), params, state.params)
    assert {str(np.asarray(x).dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
    with pytest.raises(FileExistsError):
        export.export_workdir(str(tmp_path), out)


def test_kill_9_then_resume_matches_an_uninterrupted_run(toy_cache, tmp_path):
    c = small_config(toy_cache, num_steps=16, log_every=1, checkpoint_every=4)
    ref_dir, cut_dir = str(tmp_path / "ref"), str(tmp_path / "cut")
    ref = run_train(ref_dir, c)
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]
    reference = read_losses(ref_dir)
    assert sorted(reference) == list(range(1, 17))

    kill_at = random.Random(os.getpid()).randint(6, 13)
    proc = run_train(cut_dir, c)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        path = os.path.join(cut_dir, "metrics.jsonl")
        if os.path.exists(path) and max(read_losses(cut_dir), default=0) >= kill_at:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert max(read_losses(cut_dir)) < 16, "the run finished before it could be killed"
    assert os.path.exists(os.path.join(cut_dir, train_lib.WorkdirLock.NAME))   # left behind

    resumed = run_train(cut_dir, c)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "Resumed from step" in out
    assert not os.path.exists(os.path.join(cut_dir, train_lib.WorkdirLock.NAME))   # taken, freed
    losses = read_losses(cut_dir)
    for step in range(1, 17):
        np.testing.assert_allclose(losses[step], reference[step], atol=1e-5, rtol=0,
                                   err_msg=f"step {step} (killed near {kill_at})")


def test_sigterm_saves_and_exits_cleanly(toy_cache, tmp_path):
    c = small_config(toy_cache, num_steps=400, log_every=1, checkpoint_every=1000)
    proc = run_train(str(tmp_path), c)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(tmp_path / "metrics.jsonl") and read_losses(str(tmp_path)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "after SIGTERM" in out
    steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert steps and max(steps) < 400


def test_sigterm_while_async_saves_are_in_flight_leaves_a_resumable_workdir(toy_cache,
                                                                            tmp_path):
    # A checkpoint every step, written in the background: the signal lands while one is being
    # written. The run must finish that save, save the current step, exit 0, and resume.
    c = small_config(toy_cache, num_steps=400, log_every=1, checkpoint_every=1,
                     async_checkpoints=True)
    proc = run_train(str(tmp_path), c)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(tmp_path / "metrics.jsonl") and len(read_losses(str(tmp_path))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "after SIGTERM" in out, out[-3000:]
    from rt2_jax import checkpoints

    stopped = checkpoints.Checkpointer(str(tmp_path), async_save=False).latest_step()
    assert stopped is not None and 3 <= stopped < 400
    assert not [d for d in os.listdir(tmp_path / "checkpoints") if not d.isdigit()]
    c.train.num_steps = stopped + 2
    resumed = run_train(str(tmp_path), c)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and f"Resumed from step {stopped}" in out, out[-3000:]
    assert max(read_losses(str(tmp_path))) == stopped + 2


def test_sharded_mesh_matches_one_device():
    """8 simulated CPU devices, mesh data=2 x fsdp=2 x model=2, vs 1 device: same losses."""
    out = subprocess.run(
        [sys.executable, WORKER, "mesh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
    assert result["sharded_param"] != "PartitionSpec()"  # something really is sharded
    assert result["adam_mu"] == result["sharded_param"]  # optimizer state sharded like params
    np.testing.assert_allclose(result["sharded"], result["single"], atol=1e-4, rtol=0)


def test_activations_and_weights_have_their_own_logical_axes():
    """Activation constraints map through their own act_* rules (batch over data x fsdp, the
    model width replicated, heads/mlp/vocab over model) while weights keep FSDP on embed; a
    config's own rules without act_* names still get the activation defaults."""
    import flax.linen as nn
    import ml_collections
    from jax.sharding import PartitionSpec as P

    from rt2_jax import sharding
    from rt2_jax.models import layers

    rules = sharding.DEFAULT_RULES
    batch = ("data", "fsdp")
    assert nn.logical_to_mesh_axes(layers.ACT_EMBED, rules) == P(batch, None, None)
    assert nn.logical_to_mesh_axes(layers.ACT_HEADS, rules) == P(batch, None, "model", None)
    assert nn.logical_to_mesh_axes(layers.ACT_MLP, rules) == P(batch, None, "model")
    assert nn.logical_to_mesh_axes(layers.ACT_LOGITS, rules) == P(batch, None, "model")
    assert nn.logical_to_mesh_axes((layers.EMBED, layers.MLP), rules) == P("fsdp", "model")
    own = ml_collections.ConfigDict({"sharding_rules": (("embed", None), ("mlp", "model"))})
    own_rules = sharding.rules_from_config(own)
    assert nn.logical_to_mesh_axes((layers.EMBED, layers.MLP), own_rules) == P(None, "model")
    assert nn.logical_to_mesh_axes(layers.ACT_EMBED, own_rules) == P(batch, None, None)


def test_resume_skips_a_half_written_newest_step(toy_cache, tmp_path):
    # A step directory without orbax's completion marker (a save cut off where renames are not
    # atomic, a partial copy) is moved aside, not restored and not deleted.
    c = small_config(toy_cache, num_steps=2, checkpoint_every=2)
    train_lib.train(c, str(tmp_path))
    broken = tmp_path / "checkpoints" / "3"
    broken.mkdir()
    (broken / "state").write_text("half")
    from rt2_jax import checkpoints

    assert checkpoints.Checkpointer(str(tmp_path), async_save=False).latest_step() == 2
    train_lib.train(small_config(toy_cache, num_steps=4, checkpoint_every=2), str(tmp_path))
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "3.incomplete" in names and "4" in names and "3" not in names
    assert (tmp_path / "checkpoints" / "3.incomplete" / "state").read_text() == "half"


# The aborted composite save leaves orbax's JSON-handler coroutine unawaited; that is the point.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_a_full_disk_during_a_save_fails_clearly_and_resume_works(toy_cache, tmp_path,
                                                                  monkeypatch):
    # Simulated: the state handler's write raises ENOSPC for the second save (step 4).
    import errno

    import orbax.checkpoint as ocp

    real = ocp.StandardCheckpointHandler.async_save
    calls = []

    def full_disk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full_disk)
    c = small_config(toy_cache, num_steps=6, checkpoint_every=2, async_checkpoints=True)
    with pytest.raises(RuntimeError, match=r"step 4 .*No space left on device.*last complete "
                                           r"checkpoint is step 2"):
        train_lib.train(c, str(tmp_path))
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", real)
    from rt2_jax import checkpoints

    assert checkpoints.Checkpointer(str(tmp_path), async_save=False).latest_step() == 2
    assert not os.path.exists(tmp_path / train_lib.WorkdirLock.NAME)   # the lock was freed
    train_lib.train(c, str(tmp_path))   # resumes from 2 and finishes
    assert sorted(read_losses(str(tmp_path)))[-1] == 6
    assert checkpoints.Checkpointer(str(tmp_path), async_save=False).latest_step() == 6


def test_a_second_training_on_a_busy_workdir_is_refused(toy_cache, tmp_path):
    import socket

    # A live holder (this test process) of the workdir's lock.
    (tmp_path / train_lib.WorkdirLock.NAME).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(RuntimeError, match=f"in use by another training \\(pid {os.getpid()}"):
        train_lib.train(small_config(toy_cache, num_steps=2), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_resume_with_a_different_model_is_refused_and_changes_nothing(toy_cache, tmp_path):
    c = small_config(toy_cache, num_steps=2, checkpoint_every=2)
    train_lib.train(c, str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    wider = small_config(toy_cache, num_steps=4, checkpoint_every=2)
    wider.model.encdec.d_ff = 2 * c.model.encdec.d_ff
    with pytest.raises(ValueError, match=r"different model \(model\.encdec\.d_ff: "
                                         r"checkpoint 128, config 256\).*new --workdir"):
        train_lib.train(wider, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_resume_check_compares_the_saved_config_as_json():
    """The checkpoint's config comes back from JSON (tuples as lists): the same config resumes,
    one saved before `vit.keypoint_convs` existed resumes with the default layout, and a
    different layout is refused by name."""
    from configs import tiny

    config = tiny.get_config()
    meta = {"config": config.to_json_best_effort()}
    train_lib._check_resumable(meta, config, 2, "ckpt")
    older = json.loads(meta["config"])
    del older["model"]["vit"]["keypoint_convs"]
    train_lib._check_resumable({"config": json.dumps(older)}, config, 2, "ckpt")
    config.model.vit.keypoint_convs = ((32, 2), (32, 1), (64, 1))
    for saved in (meta, {"config": json.dumps(older)}):
        with pytest.raises(ValueError, match=r"model\.vit\.keypoint_convs: checkpoint"):
            train_lib._check_resumable(saved, config, 2, "ckpt")


def test_frozen_groups_keep_optimizer_state_sharded():
    out = subprocess.run(
        [sys.executable, WORKER, "frozenmesh"], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["param"] != "PartitionSpec()"
    assert result["mu"] == [result["param"]]


def run_two_processes(mode: str, tmp_path, prefix: str, port_offset: int = 0,
                      timeout: int = 600) -> None:
    """Runs the worker's `mode` as two jax.distributed processes (2 CPU devices each), each
    writing tmp_path/{prefix}{i}.json."""
    port = str(20000 + (os.getpid() + port_offset) % 20000)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, WORKER, mode, port, str(i),
                               str(tmp_path / f"{prefix}{i}.json")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)


def test_two_processes_agree_with_one(tmp_path):
    """Two jax.distributed processes (2 CPU devices each) vs one process with 4 devices."""
    run_two_processes("multiprocess", tmp_path, "p")
    single = subprocess.run(
        [sys.executable, WORKER, "single", str(tmp_path / "single.json")], cwd=ROOT,
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert single.returncode == 0, single.stderr[-3000:]
    ref = json.loads((tmp_path / "single.json").read_text())
    for i in range(2):
        got = json.loads((tmp_path / f"p{i}.json").read_text())
        assert got["process_count"] == 2 and got["devices"] == 4
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=1e-5, rtol=0)


def test_bad_configs_are_explained_before_compiling(toy_cache):
    c = small_config(toy_cache)
    c.mesh.update(dict(data=3, fsdp=1, model=1))
    with pytest.raises(ValueError, match=r"config.mesh .*3 devices but 1 are available"):
        train_state.make_setup(c)
    c = small_config(toy_cache)
    c.data.global_batch_size = 6
    c.train.grad_accum_steps = 4
    with pytest.raises(ValueError, match="global_batch_size=6 must be divisible"):
        train_state.make_setup(c)
    c = small_config(toy_cache)
    c.data.sources.robot.builder_dir = "/nonexistent/fractal20220817_data/0.1.0"
    with pytest.raises(Exception, match="nonexistent"):
        train_lib.train(c, "unused")
    c = small_config(toy_cache, optimizer="sgdx")
    with pytest.raises(ValueError, match="sgdx"):
        train_state.make_setup(c)
    c = small_config(toy_cache, freeze_regex="^nothing_matches/")
    with pytest.raises(ValueError, match="matches no parameter"):
        train_state.make_setup(c)


def test_unknown_config_key_is_rejected(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rt2_jax.train", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--config.train.num_stepz=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "num_stepz" in out.stderr


def test_gradient_accumulation_matches_one_big_batch(toy_cache):
    """Accumulating 2 micro-batches gives the same update as one batch, also when the
    micro-batches hold different numbers of target tokens (an action row has 9, a caption up to
    40): the loss is the mean over all of the batch's tokens, not a mean of micro-batch means."""
    c1 = small_config(toy_cache, optimizer="adamw", grad_clip_norm=0.0, z_loss=0.0)
    c2 = small_config(toy_cache, optimizer="adamw", grad_clip_norm=0.0, z_loss=0.0,
                      grad_accum_steps=2)
    rng = np.random.default_rng(0)
    b = c1.data.global_batch_size
    # First micro-batch: action-length targets (9 tokens); second: full-length ones.
    batch = data_fixtures.synthetic_text_batch(c1, rng)
    assert batch["decoder_loss_mask"][: b // 2].sum() != batch["decoder_loss_mask"][b // 2:].sum()
    params, grad_norms = [], []
    for c in (c1, c2):
        setup = train_state.make_setup(c)
        tables = train_state.ActionTables(np.full(1024, -1, np.int32), np.ones((8, 1024), bool))
        step = train_state.make_train_step(setup, tables, num_sources=3)
        state, metrics = step(train_state.init_state(setup, 0), batch)
        params.append(jax.tree.map(np.asarray, state.params))
        grad_norms.append(float(metrics["grad_norm"]))
    # Adam's first update is nearly sign(grad), blind to how gradients are weighted: compare the
    # gradient itself (its norm) as well as the updated parameters.
    np.testing.assert_allclose(grad_norms[1], grad_norms[0], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), *params)


def test_action_token_noise_corrupts_only_earlier_action_inputs_of_robot_rows():
    from rt2_jax import tokenizer as tokenizer_lib
    from rt2_jax.models.encoder_decoder import shift_right

    bounds = actions_lib.ActionBounds((-1.0,) * 7, (1.0,) * 7)
    atok = actions_lib.ActionTokenizer(bounds, tokenizer_lib.Tokenizer(), "integers")
    tables = train_state.ActionTables.build(atok, 1024)
    rng = np.random.default_rng(0)
    b = 4000
    acts = rng.uniform(-1, 1, (b, 8)).astype(np.float32)
    acts[:, 0] = rng.integers(0, 2, b)
    targets = np.concatenate([atok.target_token_ids(acts), np.zeros((b, 3), np.int32)], 1)
    dec_in = shift_right(jax.numpy.asarray(targets), 0)
    robot = np.arange(b) % 4 != 0                            # every 4th row is web data
    out = np.asarray(train_state.corrupt_action_inputs(
        dec_in, jax.numpy.asarray(robot), tables, 0.5, jax.random.PRNGKey(0)))
    dec_in = np.asarray(dec_in)
    np.testing.assert_array_equal(out[~robot], dec_in[~robot])       # web rows untouched
    np.testing.assert_array_equal(out[:, 0], dec_in[:, 0])           # the start token
    np.testing.assert_array_equal(out[:, 8:], dec_in[:, 8:])         # the last dim, EOS, pad
    changed = out[robot, 1:8] != dec_in[robot, 1:8]
    # Replaced with probability 0.5; a random bin equals the true one 1/2 of the time for
    # terminate and 1/256 for the rest.
    assert abs(changed[:, 0].mean() - 0.25) < 0.03, changed[:, 0].mean()
    assert abs(changed[:, 1:].mean() - 0.5 * 255 / 256) < 0.02, changed[:, 1:].mean()
    # Every input is a valid id of its own dim (terminate ids for the first, bins for others).
    for d in range(7):
        assert np.asarray(atok.position_masks(1024))[d][out[robot, 1 + d]].all()
    same = train_state.corrupt_action_inputs(
        jax.numpy.asarray(dec_in), jax.numpy.asarray(robot), tables, 0.0, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(same), dec_in)


def test_aligned_eval_batches_pad_until_every_process_is_done():
    # One process's view: it holds one batch, another process holds three.
    rounds = iter([True, True, True, False])
    got = list(evaluation.aligned_host_batches(["b0"], "pad",
                                               any_process_has=lambda local: next(rounds)))
    assert got == ["b0", "pad", "pad"]
    assert list(evaluation.aligned_host_batches(["b0", "b1", "b2"], "pad", limit=2)) == ["b0", "b1"]
    assert list(evaluation.aligned_host_batches([], "pad")) == []


def test_two_processes_with_unequal_eval_shards_finish(tmp_path):
    """Process 0 has 3 eval batches, process 1 has 1: both run 3 jitted collectives (no hang)
    and the sums count only real rows."""
    run_two_processes("evalalign", tmp_path, "e", port_offset=7, timeout=300)
    for i in range(2):
        got = json.loads((tmp_path / f"e{i}.json").read_text())
        # batch 1: 2*1 + 2*11; batches 2 and 3: process 0's rows only.
        assert got["sums"] == [24.0, 4.0, 6.0]


def test_metrics_jsonl_appends_locally_and_resume_drops_steps_after_the_checkpoint(tmp_path):
    log = train_lib.Logger(str(tmp_path), 100)
    for step in (10, 20, 30):
        log.jsonl(step, {"loss": step / 10})
    path = tmp_path / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20, 30]
    with open(path, "a") as f:
        f.write('{"step": 40, "lo')   # a line cut off by a crash
    resumed = train_lib.Logger(str(tmp_path), 100, start_step=20)   # checkpoint at step 20
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20]
    resumed.jsonl(30, {"loss": 0.5})
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 30, "loss": 0.5}


def test_metrics_jsonl_on_an_object_store_is_rewritten_at_most_every_flush_interval():
    import tensorflow as tf

    workdir = f"ram://metrics_{os.getpid()}"
    path = workdir + "/metrics.jsonl"
    log = train_lib.Logger(workdir, 100, remote_flush_s=3600)
    log.jsonl(1, {"loss": 1.0})
    assert not tf.io.gfile.exists(path)          # buffered: no rewrite per line
    log.close()
    with tf.io.gfile.GFile(path) as f:
        assert [json.loads(line) for line in f.read().splitlines()] == [{"step": 1, "loss": 1.0}]
    log.remote_flush_s = 0
    log.jsonl(2, {"loss": 0.5})
    with tf.io.gfile.GFile(path) as f:
        assert len(f.read().splitlines()) == 2
