"""orbax checkpoints (resume) and export directories (inference).

Layout under a workdir:
  checkpoints/<step>/{state, meta}          orbax CheckpointManager; a step directory appears
                                            only once complete (orbax writes to a temporary
                                            directory and renames), so a crash mid-save never
                                            leaves an unreadable latest checkpoint
  data_iterator/<step>/process_<i>/         tf.data iterator state of each process, written
                                            before the orbax step it belongs to
An export directory holds `params/` (orbax, bf16 by default), `tokenizer.model`,
`action_stats.json` (statistics, the bounds actually used, the action mapping and the training
step) and `config.json`. Nothing pickled.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import tensorflow as tf

from rt2_jax import actions as actions_lib

EXPORT_FILES = ("params", "tokenizer.model", "action_stats.json", "config.json")


def _state_dict(state) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": state.rng}


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
                 set_aside_incomplete: bool = False):
        """`set_aside_incomplete` (the training that owns the workdir): move step directories
        without orbax's completion marker aside first. Readers (export) leave them and skip
        them in `latest_step`."""
        # orbax needs absolute paths; keep URLs (gs://...) as they are.
        workdir = absolute(workdir)
        self.workdir = workdir
        self.directory = os.path.join(workdir, "checkpoints")
        self.data_directory = os.path.join(workdir, "data_iterator")
        if set_aside_incomplete and jax.process_index() == 0:
            _set_aside_incomplete_steps(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The newest complete step (one still being written, or cut off, is skipped)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            if tf.io.gfile.exists(os.path.join(self.directory, str(step),
                                               _STEP_COMPLETE_MARKER)):
                return step
        return None

    def _data_dir(self, step: int) -> str:
        return os.path.join(self.data_directory, str(step), f"process_{jax.process_index()}")

    def save(self, step: int, state, meta: dict, mixture=None, *, wait: bool = False) -> None:
        """Saves the data position (if `mixture`), then the train state and `meta` (JSON)."""
        if mixture is not None:
            mixture.save(self._data_dir(step))
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state_dict(state)), meta=ocp.args.JsonSave(meta)),
                force=True)
            if wait:
                self.manager.wait_until_finished()
        except Exception as e:   # an earlier async save's error surfaces here too
            raise self._save_error(step, e) from e
        self._prune_data(keep_step=step)

    def _save_error(self, step: int | None, error: Exception) -> RuntimeError:
        """A save failed (a full disk, lost permissions, ...): say which, and what is safe.
        `step` is None when the failure surfaced while waiting for asynchronous saves."""
        which = (f"step {step} (or an earlier asynchronous save)" if step is not None
                 else "an asynchronous save")
        last = self.latest_step()   # the failed step has no completion marker
        last = (f"The last complete checkpoint is step {last}" if last is not None
                else "There is no complete checkpoint yet")
        return RuntimeError(
            f"Saving checkpoint {which} in {self.directory} failed: {type(error).__name__}: "
            f"{error}. {last}; a partly written step is set aside as <step>.incomplete when "
            "training resumes. Fix the cause (e.g. free disk space) and rerun the same command "
            "to resume.")

    def _prune_data(self, keep_step: int) -> None:
        if jax.process_index() != 0 or not tf.io.gfile.exists(self.data_directory):
            return
        keep = {str(s) for s in self.manager.all_steps()} | {str(keep_step)}
        for name in tf.io.gfile.listdir(self.data_directory):
            name = name.rstrip("/")
            if name.isdigit() and name not in keep and int(name) < keep_step:
                tf.io.gfile.rmtree(os.path.join(self.data_directory, name))

    def restore_meta(self, step: int) -> dict:
        """The JSON metadata saved with `step` (config, action bounds and stats) alone."""
        return self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state):
        """Restores the train state into the shardings of `abstract_state`; returns
        (state, meta)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_state_dict(abstract_state)),
            meta=ocp.args.JsonRestore()))
        s = restored["state"]
        state = abstract_state.replace(step=s["step"], params=s["params"],
                                       opt_state=s["opt_state"], rng=s["rng"])
        return state, restored["meta"]

    def restore_data(self, step: int, mixture) -> bool:
        """Restores the iterator position saved with `step`; False if none was saved."""
        directory = self._data_dir(step)
        if not tf.io.gfile.exists(os.path.join(directory, "data_iterator.index")):
            logging.warning("No data iterator state for step %d in %s; the data stream restarts "
                            "from its beginning.", step, directory)
            return False
        mixture.restore(directory)
        return True

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(None, e) from e

    def close(self) -> None:
        self.wait()
        self.manager.close()


_STEP_COMPLETE_MARKER = "_CHECKPOINT_METADATA"   # orbax writes it when a step is finished


def _set_aside_incomplete_steps(directory: str) -> list[str]:
    """Renames step directories without orbax's completion marker (a save cut off on a file
    system without atomic renames, a partial copy) to `<step>.incomplete`, so that resuming
    picks the newest complete step instead of failing on the broken one; nothing is deleted."""
    if not tf.io.gfile.isdir(directory):
        return []
    moved = []
    for name in sorted(tf.io.gfile.listdir(directory)):
        name = name.rstrip("/")
        path = os.path.join(directory, name)
        if not name.isdigit() or tf.io.gfile.exists(os.path.join(path, _STEP_COMPLETE_MARKER)):
            continue
        target, n = path + ".incomplete", 1
        while tf.io.gfile.exists(target):
            target, n = f"{path}.incomplete-{n}", n + 1
        tf.io.gfile.rename(path, target)
        logging.warning("Checkpoint step %s in %s is incomplete (no %s); moved it to %s and "
                        "resume from the newest complete step.", name, directory,
                        _STEP_COMPLETE_MARKER, target)
        moved.append(target)
    return moved


def absolute(path: str) -> str:
    """`path` made absolute when local; URIs (gs://bucket/..., any scheme://) pass unchanged
    (os.path.abspath would turn gs://b/x into <cwd>/gs:/b/x)."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def export(out_dir: str, params, config: ml_collections.ConfigDict, tokenizer_path: str,
           action_stats: dict | None, bounds: actions_lib.ActionBounds,
           dtype: str = "bfloat16", step: int | None = None, datasets: dict | None = None,
           default_dataset: str = "") -> None:
    """Writes an inference export directory (see the module docstring). `step`: the training
    step the parameters come from (recorded in action_stats.json; None when unknown).
    `datasets`: {robot dataset: {"bounds": ActionBounds JSON, "stats": ...}} when training mixed
    several robots (each binned with its own bounds); `bounds` and `action_stats` are then the
    `default_dataset`'s."""
    cast = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
    if dtype not in cast:
        raise ValueError(f"export dtype {dtype!r}: use one of {sorted(cast)}.")
    params = jax.tree.map(lambda x: x.astype(cast[dtype]), params)
    if tf.io.gfile.exists(os.path.join(out_dir, "params")):
        raise FileExistsError(f"{out_dir} already holds an export; choose a new --out directory.")
    tf.io.gfile.makedirs(out_dir)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(absolute(out_dir), "params"), params)
    if jax.process_index() != 0:
        return
    tf.io.gfile.copy(tokenizer_path, os.path.join(out_dir, "tokenizer.model"), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(out_dir, "action_stats.json"), "w") as f:
        json.dump({"stats": action_stats, "bounds": bounds.to_json_dict(),
                   "mapping": config.actions.mapping, "step": step,
                   "datasets": datasets or {}, "default_dataset": default_dataset}, f, indent=2)
    export_config = ml_collections.ConfigDict(config.to_dict())
    export_config.tokenizer.model_path = "tokenizer.model"  # relative to the export dir
    export_config.model.param_dtype = dtype
    with tf.io.gfile.GFile(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(export_config.to_json_best_effort(indent=2))
    logging.info("Exported %s params, tokenizer, action statistics and config to %s.", dtype,
                 out_dir)


def load_params_like(export_dir: str, params, regex: str = ""):
    """Parameters of the export in `export_dir`, cast and sharded like `params` (a pytree of
    arrays, e.g. freshly initialized ones). With `regex`, only parameters whose 'a/b/c' path
    matches are taken from the export and the rest keep their values in `params`. Layer stacks
    saved scanned load into an unscanned model and vice versa. Fails naming every missing or
    mis-shaped parameter."""
    import re

    import flax

    from rt2_jax.models import params as params_lib

    path = os.path.join(absolute(export_dir), "params")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"config.train.init_from={export_dir!r} holds no params/; point "
                                "it at an export directory (python -m rt2_jax.export).")
    with ocp.StandardCheckpointer() as ckptr:
        loaded = ckptr.restore(path)
    mine = flax.traverse_util.flatten_dict(params, sep="/")
    theirs = flax.traverse_util.flatten_dict(loaded, sep="/")
    pattern = re.compile(regex) if regex else None
    wanted = [k for k in mine if pattern is None or pattern.search(k)]
    if not wanted:
        raise ValueError(f"config.train.init_from_regex={regex!r} matches no parameter; names "
                         f"look like {sorted(mine)[:3]}.")
    if any(k not in theirs for k in wanted):   # the other layout (scanned or not)?
        for relayout in (params_lib.scan, params_lib.unscan):
            other = flax.traverse_util.flatten_dict(relayout(loaded), sep="/")
            if all(k in other for k in wanted):
                theirs = other
                break
    problems = [f"{k}: missing" for k in wanted if k not in theirs]
    problems += [f"{k}: shape {tuple(theirs[k].shape)} in the export, {tuple(mine[k].shape)} "
                 "in the model" for k in wanted if k in theirs and theirs[k].shape != mine[k].shape]
    if problems:
        raise ValueError(f"init_from {export_dir} does not fit the model: " + "; ".join(problems))
    out = dict(mine)
    for k in wanted:
        out[k] = jax.device_put(jnp.asarray(theirs[k], mine[k].dtype), mine[k].sharding)
    return flax.traverse_util.unflatten_dict(out, sep="/")


def load_export(export_dir: str):
    """(params, config, action_stats_json) from an export directory; the tokenizer path in the
    returned config is absolute."""
    missing = [f for f in EXPORT_FILES if not tf.io.gfile.exists(os.path.join(export_dir, f))]
    if missing:
        raise FileNotFoundError(f"{export_dir} is not a complete export: missing {missing}. "
                                "Create one with `python -m rt2_jax.export`.")
    with tf.io.gfile.GFile(os.path.join(export_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.tokenizer.model_path = os.path.join(export_dir, "tokenizer.model")
    with tf.io.gfile.GFile(os.path.join(export_dir, "action_stats.json")) as f:
        stats = json.load(f)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(absolute(export_dir), "params"))
    return params, config, stats
