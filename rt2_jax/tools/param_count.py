"""Parameter counts per component of a config's model, without allocating any weights.

    python -m rt2_jax.tools.param_count --config=configs/palix_55b.py [--json]
"""

from __future__ import annotations

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from rt2_jax.models import params as params_lib
from rt2_jax.models.vlm import VLM

# Component -> predicate on the flattened parameter name. Order matters: first match wins.
# A decoder-only model (`llm/...`) has no encoder; its tied embedding counts once.
COMPONENTS = (
    ("projection", lambda k: k.startswith("img/head/")),
    ("vit", lambda k: k.startswith("img/")),
    ("embeddings", lambda k: k.startswith(("encdec/token_embedder/",
                                             "encdec/decoder/logits_dense/",
                                             "llm/embedder/",
                                             "wrist_"))),   # the wrist camera's flag, marker
    ("encoder", lambda k: k.startswith("encdec/encoder/")),
    ("decoder", lambda k: k.startswith(("encdec/decoder/", "llm/"))),
)


def abstract_params(config) -> dict:
    """Parameter shapes of the config's model via jax.eval_shape (nothing is allocated)."""
    from rt2_jax import train_state  # the model's inputs for the config's shapes

    model = VLM.from_config(config)
    args, kwargs = train_state.init_inputs(config)
    variables = jax.eval_shape(lambda a, k: model.init(jax.random.PRNGKey(0), *a, **k),
                               args, kwargs)
    return variables["params"]


def count_by_component(params) -> dict[str, int]:
    counts = {name: 0 for name, _ in COMPONENTS}
    for key, leaf in params_lib.flatten(params).items():
        name = next((n for n, match in COMPONENTS if match(key)), None)
        if name is None:
            raise ValueError(f"Parameter {key!r} belongs to no known component.")
        counts[name] += params_lib.count(leaf)
    if not any(k.startswith("encdec/") for k in params_lib.flatten(params)):
        del counts["encoder"]   # decoder-only
    counts["total"] = sum(counts.values())
    return counts


def format_table(counts: dict[str, int]) -> str:
    total = counts["total"]
    lines = [f"{'component':<12} {'parameters':>16} {'billions':>9} {'share':>7}"]
    for name, n in counts.items():
        lines.append(f"{name:<12} {n:>16,} {n / 1e9:>9.3f} {100 * n / total:>6.1f}%")
    return "\n".join(lines)


def main(argv):
    del argv
    counts = count_by_component(abstract_params(flags.FLAGS.config))
    print(json.dumps(counts) if flags.FLAGS.json else format_table(counts))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_bool("json", False, "Print one flat JSON object instead of a table.")
    flags.mark_flag_as_required("config")
    app.run(main)
