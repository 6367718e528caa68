"""Subprocess worker for tests/test_train.py (needs its own XLA device count or jax.distributed).

    train_worker.py mesh                              8 devices: mesh 2x2x2 vs 1 device
    train_worker.py frozenmesh                        8 devices: optimizer sharding, frozen ViT
    train_worker.py multiprocess PORT PROCESS_ID OUT  one of two jax.distributed processes
    train_worker.py single OUT                        the one-process reference
    train_worker.py evalalign PORT PROCESS_ID OUT     unequal eval shards over two processes
Each runs a few train steps of the tiny model on fixed synthetic batches and reports losses.
"""

import json
import sys

import jax
import numpy as np

STEPS = 3
GLOBAL_BATCH = 8


def config():
    from configs import tiny

    c = tiny.get_config()
    c.data.global_batch_size = GLOBAL_BATCH
    c.max_target_len = 16
    c.train.update(dict(warmup_steps=1, optimizer="adamw", learning_rate=1e-3))
    return c


def global_batch(c, step: int) -> dict:
    rng = np.random.default_rng(step)
    b, le, ld = GLOBAL_BATCH, c.max_prompt_len, c.max_target_len
    lengths = rng.integers(3, le, b)
    robot = np.arange(b) % 2 == 0
    dec = rng.integers(3, 500, (b, ld)).astype(np.int32)
    dec[robot, :8] = rng.integers(3, 259, (robot.sum(), 8))  # the tiny vocab's number ids
    return {
        "image": rng.integers(0, 256, (b, c.image_size, c.image_size, 3), dtype=np.uint8),
        "encoder_tokens": rng.integers(3, 500, (b, le)).astype(np.int32),
        "encoder_mask": np.arange(le)[None] < lengths[:, None],
        "decoder_tokens": dec,
        "decoder_loss_mask": (np.arange(ld)[None] < rng.integers(2, ld, b)[:, None]).astype(
            np.float32),
        "source": np.where(robot, 1, 2).astype(np.int32),
        "is_robot": robot,
        "action": rng.uniform(-1, 1, (b, 8)).astype(np.float32),
    }


def local_rows(sharding, shape) -> np.ndarray:
    """Global batch rows held by this process's devices, in order."""
    rows = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows.update(range(*index[0].indices(shape[0])))
    return np.array(sorted(rows))


def run(mesh) -> tuple[list[float], object]:
    from rt2_jax import train_state

    c = config()
    setup = train_state.make_setup(c, mesh)
    tables = train_state.ActionTables(np.where(np.arange(1024) < 259, np.arange(1024) - 3, -1)
                                  .astype(np.int32), np.ones((8, 1024), bool))
    step_fn = train_state.make_train_step(setup, tables, num_sources=3)
    state = train_state.init_state(setup, 0)
    losses = []
    for i in range(STEPS):
        full = global_batch(c, i)
        batch = {}
        for k in train_state.MODEL_KEYS:
            sh = setup.batch_sharding[k]
            local = full[k][local_rows(sh, full[k].shape)]
            batch[k] = jax.make_array_from_process_local_data(sh, local, full[k].shape)
        state, metrics = step_fn(state, batch)
        summary = train_state.summarize(jax.tree.map(np.asarray, metrics), ("a", "robot", "web"))
        losses.append(float(summary["loss"]))
    return losses, setup


def main(argv):
    from configs import tiny  # noqa: F401  (fail early if the repo is not importable)
    from rt2_jax import sharding

    mode = argv[1]
    if mode == "mesh":
        c = config()
        c.mesh.update(dict(data=2, fsdp=2, model=2))
        sharded, setup = run(sharding.make_mesh(c))
        spec = setup.state_sharding.params["encdec"]["decoder"]["layers"]["mlp"]["wi_0"][
            "kernel"].spec
        # AdamW's first moment of the same weight must be sharded like the weight.
        mu_spec = next(
            v.spec for k, v in jax.tree_util.tree_leaves_with_path(setup.state_sharding.opt_state)
            if ".mu['encdec']['decoder']['layers']['mlp']['wi_0']['kernel']"
            in jax.tree_util.keystr(k))
        c.mesh.update(dict(data=1, fsdp=1, model=1))
        single, _ = run(sharding.make_mesh(c, jax.devices()[:1]))
        print(json.dumps({"mesh": dict(setup.mesh.shape), "sharded": sharded, "single": single,
                          "sharded_param": str(spec), "adam_mu": str(mu_spec)}))
    elif mode == "frozenmesh":
        # A frozen image tower (multi_transform): the trained weights' AdamW moments must still
        # be sharded like the weights, not replicated.
        from rt2_jax import train_state

        c = config()
        c.mesh.update(dict(data=2, fsdp=2, model=2))
        c.train.freeze_regex = "^img/"
        setup = train_state.make_setup(c, sharding.make_mesh(c))
        spec = setup.state_sharding.params["encdec"]["decoder"]["layers"]["mlp"]["wi_0"][
            "kernel"].spec
        mus = [str(v.spec) for k, v in
               jax.tree_util.tree_leaves_with_path(setup.state_sharding.opt_state)
               if ".mu['encdec']['decoder']['layers']['mlp']['wi_0']['kernel']"
               in jax.tree_util.keystr(k)]
        print(json.dumps({"param": str(spec), "mu": mus}))
    elif mode == "multiprocess":
        port, pid, out = argv[2], int(argv[3]), argv[4]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=pid)
        losses, _ = run(sharding.make_mesh(config()))
        with open(out, "w") as f:
            json.dump({"losses": losses, "process_count": jax.process_count(),
                       "devices": jax.device_count()}, f)
    elif mode == "evalalign":
        # Unequal eval shards: process 0 holds 3 host batches, process 1 one. Each aligned
        # batch goes through a jitted global sum, the collective that hangs when one process
        # stops early.
        port, pid, out = argv[2], int(argv[3]), argv[4]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=pid)
        from rt2_jax import evaluation

        mesh = sharding.make_mesh(config())
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        local = [{"x": np.full(2, 10.0 * pid + i + 1, np.float32), "valid": np.ones(2, bool)}
                 for i in range((3, 1)[pid])]
        padding = {"x": np.zeros(2, np.float32), "valid": np.zeros(2, bool)}
        total = jax.jit(lambda x, v: (x * v).sum())
        sums = []
        for host in evaluation.aligned_host_batches(local, padding):
            x = jax.make_array_from_process_local_data(spec, host["x"])
            v = jax.make_array_from_process_local_data(spec, host["valid"])
            sums.append(float(total(x, v)))
        with open(out, "w") as f:
            json.dump({"sums": sums}, f)
    elif mode == "single":
        losses, _ = run(sharding.make_mesh(config()))
        with open(argv[2], "w") as f:
            json.dump({"losses": losses, "process_count": 1, "devices": jax.device_count()}, f)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
