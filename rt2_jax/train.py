"""Training entry point.

    python -m rt2_jax.train --config=configs/tiny.py --workdir=runs/tiny [--config.x=y ...]

Builds the mesh and shardings from the config, reads the data mixture, and trains with one
jitted, donated train step. Resumes from the latest checkpoint in {workdir}/checkpoints (params,
optimizer, step, RNG, data iterator position, action statistics); saves and exits cleanly on
SIGTERM. Logs readable console lines and TensorBoard events (process 0 only).

(Over 400 lines: the loop plus the pieces only it uses: the logger, the workdir lock, the
preemption flag and the resume checks. The model, loss and step live in train_state.py.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags


def define_flags() -> None:
    """Command-line flags; defined only when run as a program so the module imports cleanly."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_string("workdir", None, "Directory (or gs:// path) for checkpoints, "
                        "TensorBoard events and exports.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process "
                        "runs off TPU (TPU pods detect it).")
    flags.DEFINE_integer("num_processes", None, "Number of processes.")
    flags.DEFINE_integer("process_id", None, "This process's index.")
    flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """jax.distributed.initialize() for multi-process runs: explicit flags, or a TPU pod."""
    if coordinator:
        if num_processes is None or process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()  # multi-host TPU slice: discovered from the environment


def validate_config(config) -> None:
    """Fails before anything compiles, naming the bad field and the fix."""
    for section in ("model", "data", "train", "mesh", "eval"):
        if section not in config:
            raise ValueError(f"The config has no `{section}` section; start from configs/base.py.")
    t = config.train
    if t.num_steps <= 0:
        raise ValueError(f"config.train.num_steps={t.num_steps} must be positive.")
    for name in ("log_every", "checkpoint_every"):
        if t[name] <= 0:
            raise ValueError(f"config.train.{name}={t[name]} must be positive.")
    if t.grad_accum_steps < 1:
        raise ValueError(f"config.train.grad_accum_steps={t.grad_accum_steps} must be >= 1.")
    if config.data.global_batch_size % jax.process_count():
        raise ValueError(f"config.data.global_batch_size={config.data.global_batch_size} is not "
                         f"divisible by the {jax.process_count()} processes.")


class Preemption:
    """Turns SIGTERM into a flag the loop checks, so it can save before exiting."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the end of this step.")
        self.requested = True

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags_all = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags_all))


class Logger:
    """Console lines for people, TensorBoard scalars and metrics.jsonl (process 0 only).

    metrics.jsonl gets one JSON line per log step. On a local disk each line is appended (a
    crash loses nothing already logged). Object stores (gs://...) cannot append, so there the
    file is rewritten whole at most every `remote_flush_s` seconds and at `close()`; TensorBoard
    has every step regardless. A resumed run first drops the lines of steps after the
    checkpoint it resumed from, so each step appears once."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
                 remote_flush_s: float = 60.0):
        self.total_steps = total_steps
        self.writer = None
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self.remote = "://" in self.jsonl_path
        self.remote_flush_s = remote_flush_s
        self._flushed_at = time.monotonic()
        self._dirty = False
        self.lines: list[str] = []
        if jax.process_index() == 0:
            import tensorflow as tf
            self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
            if tf.io.gfile.exists(self.jsonl_path):
                with tf.io.gfile.GFile(self.jsonl_path) as f:
                    old = f.read().splitlines()
                self.lines = [line for line in old if _logged_step(line) <= start_step]
                if len(self.lines) != len(old):
                    self._rewrite()

    def _rewrite(self) -> None:
        with open_text(self.jsonl_path + ".tmp", "w") as f:
            f.write("".join(line + "\n" for line in self.lines))
        import tensorflow as tf
        tf.io.gfile.rename(self.jsonl_path + ".tmp", self.jsonl_path, overwrite=True)
        self._flushed_at, self._dirty = time.monotonic(), False

    def jsonl(self, step: int, values: dict[str, float]) -> None:
        """Logs one JSON line {"step": step, ...values} to {workdir}/metrics.jsonl."""
        if jax.process_index() != 0:
            return
        line = json.dumps({"step": step, **{k: float(v) for k, v in values.items()}})
        self.lines.append(line)
        if not self.remote:
            with open(self.jsonl_path, "a") as f:
                f.write(line + "\n")
            return
        self._dirty = True
        if time.monotonic() - self._flushed_at >= self.remote_flush_s:
            self._rewrite()

    def close(self) -> None:
        """Writes what a remote metrics.jsonl still lacks."""
        if jax.process_index() == 0 and self.remote and self._dirty:
            self._rewrite()

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if self.writer is None:
            return
        import tensorflow as tf
        with self.writer.as_default():
            for k, v in values.items():
                tf.summary.scalar(prefix + k, float(v), step=step)
        self.writer.flush()

    def console(self, step: int, values: dict[str, float], keys: tuple[str, ...]) -> None:
        if jax.process_index() != 0:
            return
        parts = [f"step {step}/{self.total_steps}"]
        for k in keys:
            if k in values:
                v = values[k]
                parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        print(" | ".join(parts), flush=True)


class WorkdirLock:
    """`workdir/train.lock` (pid and host of the training that holds it), taken by process 0.

    A second training on the same workdir fails at start instead of interleaving checkpoints
    with the first. A lock left by a process that no longer runs on this host (kill -9, a
    crash) is taken over with a warning; one from another host must be removed by hand.
    Remote workdirs (gs://...) are not locked: object stores have no exclusive create."""

    NAME = "train.lock"

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, self.NAME)
        self.active = jax.process_index() == 0 and "://" not in workdir
        self.workdir = workdir

    def __enter__(self):
        if not self.active:
            return self
        import socket

        os.makedirs(self.workdir, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid")):
                    logging.warning("Removing a stale %s left by pid %s (not running).",
                                    self.path, holder.get("pid"))
                    os.remove(self.path)
                    continue
                raise RuntimeError(
                    f"{self.workdir} is in use by another training (pid {holder.get('pid')} on "
                    f"{holder.get('host')}): two runs would overwrite each other's checkpoints. "
                    f"Stop it, use another --workdir, or delete {self.path} if that run is "
                    "gone.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise RuntimeError(f"could not take {self.path}")

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc):
        if self.active and self._holder().get("pid") == os.getpid():
            os.remove(self.path)
        return False


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train(config, workdir: str) -> dict[str, float]:
    """Trains; returns the last logged metrics (used by tests and benchmarks). Holds
    `WorkdirLock(workdir)` while it runs."""
    with WorkdirLock(workdir):
        return _train(config, workdir)


def _train(config, workdir: str) -> dict[str, float]:
    # Deferred imports keep `--help` fast and let tests set XLA flags before JAX starts.
    from data_pipelines import mixture as mixture_lib
    from rt2_jax import checkpoints, evaluation, optim, train_state
    from rt2_jax.models import params as params_lib

    validate_config(config)
    setup = train_state.make_setup(config)
    say(f"Mesh {dict(setup.mesh.shape)} over {jax.device_count()} devices "
        f"({jax.process_count()} processes).")
    mixture = mixture_lib.build_mixture(config, split="train", process_index=jax.process_index(),
                                        process_count=jax.process_count())
    vocab = int(config.model.vocab_size)
    if mixture.tokenizer.vocab_size > vocab:
        raise ValueError(f"config.model.vocab_size={vocab} is smaller than the tokenizer's "
                         f"{mixture.tokenizer.vocab_size} pieces; raise it.")
    tables = train_state.ActionTables.build(mixture.action_tokenizer, vocab)
    step_fn = train_state.make_train_step(setup, tables, len(mixture.source_names))
    ckpt = checkpoints.Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                                    async_save=bool(config.train.async_checkpoints),
                                    set_aside_incomplete=True)
    meta = {"action_stats": mixture.action_stats,
            "action_bounds": mixture.action_bounds.to_json_dict(),
            "datasets": export_datasets(mixture), "default_dataset": mixture.default_dataset,
            "source_names": list(mixture.source_names), "config": config.to_json_best_effort()}

    latest = ckpt.latest_step()
    if latest is None:
        state = fresh_state(setup, config)
        say(f"Initialized {params_lib.count(setup.abstract_state.params):,} parameters; "
            f"training {config.train.num_steps} steps.")
        if config.train.get("init_from", ""):
            say(f"Loaded parameters from {config.train.init_from} (optimizer and step start "
                "fresh).")
    else:
        _check_resumable(ckpt.restore_meta(latest), config, latest, ckpt.directory)
        state, saved_meta = ckpt.restore(latest, setup.abstract_state)
        saved_bounds = {name: d["bounds"] for name, d in
                        (saved_meta.get("datasets") or {}).items()}
        now_bounds = {name: d["bounds"] for name, d in meta["datasets"].items()}
        if (saved_meta.get("action_bounds") != meta["action_bounds"]
                or (saved_bounds and saved_bounds != now_bounds)):
            raise ValueError(
                f"The checkpoint at step {latest} was trained with action bounds "
                f"{saved_bounds or saved_meta.get('action_bounds')}, but the data now gives "
                f"{now_bounds or meta['action_bounds']}. Use the same data and config.actions, "
                "or a new --workdir.")
        ckpt.restore_data(latest, mixture)
        say(f"Resumed from step {latest} in {ckpt.directory}.")
    start_step = int(state.step)

    total = int(config.train.num_steps)
    log = Logger(workdir, total, start_step)
    preempt = Preemption()
    evaluator = evaluation.Evaluator(config, setup, mixture) if config.train.eval_every else None
    schedule = optim.learning_rate_schedule(config.train)
    sums, wait_s, last = None, 0.0, {}
    examples_per_step = int(config.data.global_batch_size)
    t_window = time.perf_counter()
    steps_in_window = 0
    metrics = None
    for step in range(start_step, total):
        t0 = time.perf_counter()
        host_batch = next(mixture)
        # Steps run asynchronously: fetching overlaps the previous step. Time counts as waiting
        # for data only if the accelerator was already idle (the previous step had finished)
        # when the batch arrived — an upper bound on the real stall.
        if metrics is None or metrics["loss_sum"].is_ready():
            wait_s += time.perf_counter() - t0
        batch = {k: jax.make_array_from_process_local_data(setup.batch_sharding[k],
                                                           host_batch[k])
                 for k in setup.batch_sharding}   # MODEL_KEYS (+ wrist-camera keys)
        state, metrics = step_fn(state, batch)
        # Summed on device (jnp, not np) so the host never waits for a step between log lines.
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        steps_in_window += 1
        done = step + 1
        if done % config.train.log_every == 0 or done == total:
            sums = jax.tree.map(np.asarray, sums)  # waits for the step to finish
            elapsed = time.perf_counter() - t_window
            step_s = elapsed / steps_in_window
            last = train_state.summarize(sums, mixture.source_names)
            last.update(
                grad_norm=float(metrics["grad_norm"]), param_norm=float(metrics["param_norm"]),
                learning_rate=float(schedule(done)),
                steps_per_s=1.0 / step_s, examples_per_s=examples_per_step / step_s,
                data_wait_fraction=wait_s / elapsed, eta_min=(total - done) * step_s / 60)
            log.console(done, last, ("loss", "loss/robot", "action_acc", "action_l1",
                                     "web_token_acc", "locate_dist", "kp_action_acc",
                                     "learning_rate",
                                     "grad_norm",
                                     "steps_per_s", "data_wait_fraction", "eta_min"))
            log.scalars(done, last, "train/")
            log.jsonl(done, last)
            sums, wait_s, steps_in_window = None, 0.0, 0
            t_window = time.perf_counter()
        if evaluator is not None and (done % config.train.eval_every == 0 or done == total):
            results = {f"eval/{k}": v for k, v in evaluator.run(state.params).items()}
            log.console(done, results, tuple(k for k in results if k.count("/") == 1))
            log.scalars(done, results)
            log.jsonl(done, results)
            last.update(results)
            t_window = time.perf_counter()
        stop = preempt.any_process()
        if done % config.train.checkpoint_every == 0 or done == total or stop:
            ckpt.save(done, state, meta, mixture, wait=stop or done == total)
        if stop:
            log.close()
            say(f"Saved step {done} after SIGTERM; exiting. Re-run the same command to resume.")
            ckpt.close()
            sys.exit(0)
    log.close()
    ckpt.close()
    if config.train.export_at_end and start_step < total:
        checkpoints.export(os.path.join(workdir, "export"), state.params, config,
                           mixture.tokenizer.model_path, mixture.action_stats,
                           mixture.action_bounds, config.train.export_dtype, step=total,
                           datasets=meta["datasets"], default_dataset=mixture.default_dataset)
    return last


def fresh_state(setup, config):
    """The state a new run's first step starts from: parameters initialized from config.seed,
    then those of `config.train.init_from` (an export or an import of published weights)
    matching `config.train.init_from_regex` loaded over them; optimizer state and step fresh."""
    from rt2_jax import checkpoints, train_state

    state = train_state.init_state(setup, int(config.seed))
    init_from = config.train.get("init_from", "")
    if init_from:
        state = state.replace(params=checkpoints.load_params_like(
            init_from, state.params, config.train.get("init_from_regex", "")))
    return state


def export_datasets(mixture) -> dict:
    """{robot dataset: {"bounds": ..., "stats": ...}} as checkpoints and exports record them."""
    return {name: {"bounds": bounds.to_json_dict(),
                   "stats": mixture.all_action_stats.get(name)}
            for name, bounds in mixture.dataset_bounds.items()}


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line cut off by a crash (dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def open_text(path: str, mode: str):
    import tensorflow as tf
    return tf.io.gfile.GFile(path, mode)


def say(message: str) -> None:
    """Progress a person should see (process 0), independent of the log verbosity."""
    if jax.process_index() == 0:
        print(message, flush=True)


def _check_resumable(saved_meta: dict, config, step: int, directory: str) -> None:
    """Fails before restoring (nothing in the workdir changes) when the checkpoint's model
    shape differs from the config's: the keys of config.model / image_size that differ."""
    import flax

    try:
        saved = ml_collections.ConfigDict(json.loads(saved_meta["config"]))
    except (KeyError, TypeError, ValueError):
        return   # a checkpoint without a readable config: orbax checks shapes itself

    def shape_keys(c) -> dict:
        # Through JSON, as the checkpoint's config was saved: tuples become lists on both sides.
        model = json.loads(c.model.to_json_best_effort())
        flat = flax.traverse_util.flatten_dict(model, sep=".")
        return {**{f"model.{k}": v for k, v in flat.items()}, "image_size": c.image_size}

    mine, theirs = shape_keys(config), shape_keys(saved)
    # Model options added after checkpoints existed whose default is not off (0, False, ""):
    # a checkpoint saved without the key had that default.
    from rt2_jax.models import vit as vit_lib

    for key, value in {"model.vit.keypoint_convs": vit_lib.KEYPOINT_CHANNELS}.items():
        if key not in theirs:
            theirs[key] = json.loads(json.dumps(value))
    # A key the checkpoint's config lacks was added to the configs later; off (0, False, "")
    # in this config means the checkpoint's model, which predates the option, had it off too.
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)
                    and (k in theirs or mine.get(k)))
    if differ:
        shown = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, config {mine.get(k)!r}"
                          for k in differ[:8])
        raise ValueError(
            f"The checkpoint at step {step} in {directory} was trained with a different model "
            f"({shown}{'; ...' if len(differ) > 8 else ''}). Resume with the config it was "
            "trained with, or start in a new --workdir (to start from its weights, export it "
            "and set config.train.init_from).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # keep the console readable; -v 0 = all
    f = flags.FLAGS
    initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    train(f.config, f.workdir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
