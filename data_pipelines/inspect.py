"""Prints what the model will see from a config's data.

  python -m data_pipelines.inspect --config=configs/tiny.py --num_batches=4 [--json]
      [--split=val] [--image_grid=batch.png] [--config.data.sources.robot.weight=2]

Shapes and dtypes, decoded prompts and targets (robot actions as integers and in robot units),
per-source counts against the weights, each robot dataset's bounds and the share of its actions
clipped to them, the skip/clip counters, and a PNG grid of one batch.
"""
import collections
import contextlib
import json
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from data_pipelines import mixture as mixture_lib
from rt2_jax import actions as actions_lib


def describe_example(mix, batch, row):
    source = mix.source_names[int(batch["source"][row])]
    # A robot row is binned with its own dataset's bounds.
    tok, atok = mix.tokenizer, mix.dataset_tokenizers.get(source, mix.action_tokenizer)
    out = {
        "source": source,
        "prompt": tok.decode(batch["encoder_tokens"][row]),
        "target_ids": batch["decoder_tokens"][row][batch["decoder_loss_mask"][row] > 0].tolist(),
    }
    if batch["is_robot"][row]:
        ids = batch["decoder_tokens"][row][:8]
        out["action_bins"] = atok.token_ids_to_bins(ids).tolist()
        robot_units = atok.action_from_token_ids(ids).astype(np.float64)
        out["action_robot_units"] = np.round(robot_units, 4).tolist()
        out["action_normalized"] = np.round(batch["action"][row].astype(np.float64), 4).tolist()
    else:
        out["target"] = tok.decode(batch["decoder_tokens"][row])
    return out


def dataset_clipping(mix) -> dict:
    """Robot dataset -> actions binned so far (the pipeline reads ahead of the batches taken)
    and, per continuous dim, the share of them clipped to its dataset's bounds."""
    out = {}
    for name, tok in mix.dataset_tokenizers.items():
        if not name:
            continue
        n = tok.num_encoded
        share = tok.num_clipped_per_dim / max(n, 1)
        out[name] = {"actions": int(n), "clipped_values": int(tok.num_clipped),
                     "clipped_share": {dim: round(float(v), 4) for dim, v in
                                       zip(actions_lib.CONTINUOUS_DIMS, share, strict=True)}}
    return out


def image_grid(images, columns=8):
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    return grid


def inspect(config, split, num_batches, num_examples, grid_path):
    mix = mixture_lib.build_mixture(config, split=split)
    counts = collections.Counter()
    first, total = None, 0
    for _ in range(num_batches):
        try:
            batch = next(mix)
        except StopIteration:
            break
        first = batch if first is None else first
        valid = batch.get("valid", np.ones_like(batch["is_robot"]))
        counts.update(batch["source"][valid].tolist())
        total += int(valid.sum())
    if first is None:
        raise SystemExit(f"The {split} stream is empty.")
    if grid_path:
        Image.fromarray(image_grid(first["image"])).save(grid_path)
    return {
        "split": split,
        "shapes": {k: [str(v.dtype), list(v.shape)] for k, v in first.items()},
        "examples": [describe_example(mix, first, r)
                     for r in range(min(num_examples, len(first["source"])))],
        "sources": {name: {"weight": round(weight, 4), "count": counts[i],
                           "fraction": round(counts[i] / max(total, 1), 4)}
                    for i, (name, weight) in enumerate(zip(mix.source_names, mix.weights,
                                                           strict=True))},
        "counters": mix.counters(),
        "action_bounds": mix.action_bounds.to_json_dict(),
        "dataset_bounds": {name: b.to_json_dict() for name, b in mix.dataset_bounds.items()},
        "dataset_clipping": dataset_clipping(mix),
        "action_stats": {k: v for k, v in (mix.action_stats or {}).items() if k != "mapping"},
        "image_grid": grid_path,
    }


def print_text(report):
    print(f"split: {report['split']}")
    for key, (dtype, shape) in report["shapes"].items():
        print(f"  {key:18s} {dtype:8s} {shape}")
    print("examples:")
    for example in report["examples"]:
        print(f"  [{example['source']}] {example['prompt']!r}")
        if "action_bins" in example:
            print(f"      action bins  {example['action_bins']}")
            print(f"      robot units  {example['action_robot_units']}")
        else:
            print(f"      target       {example['target']!r}")
    print("sources (count / fraction vs weight):")
    for name, s in report["sources"].items():
        print(f"  {name:12s} {s['count']:6d}  {s['fraction']:.3f} vs {s['weight']:.3f}")
    print("action bounds per robot dataset (low .. high, continuous dims):")
    for name, b in report["dataset_bounds"].items():
        low = ", ".join(f"{v:.4g}" for v in b["low"])
        high = ", ".join(f"{v:.4g}" for v in b["high"])
        print(f"  {name:12s} [{low}] .. [{high}]")
    print("clipped to those bounds (share of actions binned so far, per dim):")
    for name, c in report["dataset_clipping"].items():
        shares = ", ".join(f"{dim} {v:.3f}" for dim, v in c["clipped_share"].items())
        print(f"  {name:12s} {c['actions']} actions: {shares}")
    print("counters:", json.dumps(report["counters"]))
    if report["image_grid"]:
        print("image grid:", report["image_grid"])


def main(argv):
    del argv
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout
        f = flags.FLAGS
        report = inspect(f.config, f.split, f.num_batches, f.examples, f.image_grid)
    if flags.FLAGS.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print_text(report)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_integer("num_batches", 4, "Batches to read.")
    flags.DEFINE_enum("split", "train", ["train", "val"], "Which stream.")
    flags.DEFINE_integer("examples", 6, "Examples of the first batch to print.")
    flags.DEFINE_string("image_grid", "data_batch.png", "PNG of the first batch.")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
    flags.mark_flag_as_required("config")
    app.run(main)
