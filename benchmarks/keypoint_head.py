"""Train-step time of the image tower's keypoint head layouts, side by side; prints JSON.

  python -m benchmarks.keypoint_head [--config=configs/tiny.py] [--batch=32] [--reps=10]
      [--layouts=default,stride_first,none] [--out=FILE]

Each layout is the config with `model.vit.keypoints=16`, `keypoint_query`, the keypoint action
readout (weight 1) and `keypoint_convs` set to the layout's (channels, stride) pairs; `none` is
the same config without keypoints (the head's whole cost is the difference). The trainer's jitted
step (`rt2_jax.train_state.make_train_step`) runs on the fixed synthetic batches of
benchmarks/step_common.py (half robot rows), as in benchmarks/train_throughput.py. Timed calls
alternate between the layouts round by round, so a slow spell of a shared machine lands on all
of them; each layout reports its median and spread, and `ratio_to_default` is its median over
the default layout's.
"""

import platform

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks import output
from benchmarks import step_common as tt
from rt2_jax import actions, tokenizer
from rt2_jax.models import vit

LAYOUTS = {
    "default": vit.KEYPOINT_CHANNELS,
    "stride_first": ((32, 2), (32, 1), (64, 1)),   # same 32x32 map at 64 px, 11 px field
    "two_stride": ((32, 2), (64, 2)),              # a quarter-resolution map
    "none": None,                                  # no keypoint head at all
}

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model config.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch size (one CPU device).")
_REPS = flags.DEFINE_integer("reps", 10, "Timed rounds (one call per layout per round).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls per layout first (the first compiles).")
_LAYOUTS = flags.DEFINE_list("layouts", ["default", "stride_first", "none"],
                             f"Layouts to compare, from {sorted(LAYOUTS)}.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")


def layout_config(base, convs):
    config = tt.bench_config(base, _BATCH.value, "adamw")
    if convs is not None:
        config.model.vit.keypoints = 16
        config.model.vit.keypoint_query = True
        config.model.vit.keypoint_action_head = True
        config.model.vit.keypoint_convs = convs
        config.train.keypoint_action_weight = 1.0
    return config


def main(argv):
    del argv
    unknown = sorted(set(_LAYOUTS.value) - set(LAYOUTS))
    if unknown or "default" not in _LAYOUTS.value:
        raise app.UsageError(f"--layouts must name layouts from {sorted(LAYOUTS)} and include "
                             f"'default' (the ratios' reference); got {_LAYOUTS.value}")
    tok = tokenizer.Tokenizer(_CONFIG.value.tokenizer.get("model_path") or None)
    bounds = actions.ActionBounds((-1.0,) * 7, (1.0,) * 7)
    runs = {}
    for name in _LAYOUTS.value:
        config = layout_config(_CONFIG.value, LAYOUTS[name])
        act_tok = actions.ActionTokenizer(bounds, tok, config.actions.mapping)
        run, num_params, _ = tt.full_step_fn(config, act_tok, tok, _BATCH.value, 2)
        for _ in range(_WARMUP.value):
            jax.block_until_ready(run())
        runs[name] = (run, num_params)
    times = {name: [] for name in runs}
    for _ in range(_REPS.value):
        for name, (run, _) in runs.items():
            times[name] += tt.timings_ms(run, 1, 0)
    spreads = {name: tt.spread(t) for name, t in times.items()}
    reference = spreads["default"]["median_ms"]
    result = {
        "benchmark": "keypoint_head",
        "config": config_flags.get_config_filename(flags.FLAGS["config"]),
        "batch": _BATCH.value, "reps": _REPS.value, "backend": jax.default_backend(),
        "machine": platform.machine(),
        "layouts": {name: {"keypoint_convs": LAYOUTS[name], "params": runs[name][1],
                           **spreads[name],
                           "ratio_to_default": round(spreads[name]["median_ms"] / reference, 3)}
                    for name in runs},
    }
    output.emit(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
