"""Export a trained workdir for inference.

    python -m rt2_jax.export --workdir=runs/tiny --out=exports/tiny [--step=N] [--dtype=bfloat16]

Reads the latest (or --step) checkpoint's parameters only (no optimizer state) and writes an
export directory: `params/` (orbax), `tokenizer.model`, `action_stats.json` (the statistics and
bounds training used) and `config.json`. Nothing is pickled.
"""

from __future__ import annotations

import json

import ml_collections
import orbax.checkpoint as ocp
from absl import app, flags
from absl import logging as absl_logging

from rt2_jax import actions as actions_lib
from rt2_jax import checkpoints, tokenizer


def export_workdir(workdir: str, out: str, step: int | None = None,
                   dtype: str = "bfloat16") -> int:
    """Exports checkpoint `step` (default latest) of `workdir` to `out`; returns the step.

    The state is restored into the shardings the saved config gives on the devices at hand (run
    it where the model fits, e.g. on the training slice for the large configs)."""
    from rt2_jax import train_state

    ckpt = checkpoints.Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {ckpt.directory}; train first "
                                "(python -m rt2_jax.train --workdir=...).")
    meta = ckpt.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    setup = train_state.make_setup(config)
    state, _ = ckpt.restore(step, setup.abstract_state)
    tok = tokenizer.Tokenizer(config.tokenizer.get("model_path") or None)
    bounds = actions_lib.ActionBounds.from_json_dict(meta["action_bounds"])
    checkpoints.export(out, state.params, config, tok.model_path, meta["action_stats"], bounds,
                       dtype, step=step, datasets=meta.get("datasets"),
                       default_dataset=meta.get("default_dataset", ""))
    ckpt.close()
    return step


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines; -v 0 shows them
    print(f"Exporting {f.workdir} to {f.out} ...", flush=True)
    step = export_workdir(f.workdir, f.out, f.step, f.dtype)
    print(f"Exported step {step} of {f.workdir} to {f.out}.")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
    flags.DEFINE_string("out", None, "Export directory to create.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Parameter dtype.")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
