"""Ahead-of-time fit check: compile a config's train step (or action decoding) for a TPU topology
on a CPU host, and report per-device memory, FLOPs and whether it fits in HBM.

    JAX_PLATFORMS=cpu python -m rt2_jax.tools.aot --config=configs/palix_55b.py \
        --topology=v5p:4x4x4 [--step=train|decode] [--json] [--out=PREFIX] [--config.x=y]

Needs libtpu (`pip install 'jax[tpu]'`) for the topology descriptions; no TPU, no weights and no
data are touched: every input is a `jax.ShapeDtypeStruct` carrying its sharding. The program
compiled is the one `rt2_jax.train` runs (`train_state.make_setup` + `train_state.make_train_step`).

Exit codes: 0 fits, 1 does not fit (including XLA running out of memory at compile time),
2 the configuration cannot be built on that topology (e.g. a mesh that does not divide it).

(Over 400 lines: a command-line tool whose lowering, memory report and table printing are only
used here.)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from rt2_jax import actions as actions_lib
from rt2_jax import decoding, preprocessing, sharding, train_state
from rt2_jax.models import params as params_lib
from rt2_jax.models import vit as vit_lib
from rt2_jax.models import vlm as vlm_lib
from rt2_jax.tools import param_count

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int          # per chip
    peak_flops: float       # bf16 FLOP/s per chip


# Keyed by `device.device_kind` as libtpu reports it (see the table in the project's docs).
CHIPS = {
    "TPU v4": Chip(32 * GIB, 275e12),
    "TPU v5 lite": Chip(16 * GIB, 197e12),
    "TPU v5e": Chip(16 * GIB, 197e12),
    "TPU v5": Chip(95 * GIB, 459e12),
    "TPU v5p": Chip(95 * GIB, 459e12),
    "TPU v6 lite": Chip(32 * GIB, 918e12),
    "TPU v6e": Chip(32 * GIB, 918e12),
}

_OOM_PATTERNS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory", "exceeds the memory")
# XLA:TPU phrasings of "needs X of Y": "Used 120.5G of 95.7G hbm" and "the total memory
# required for HLO temporaries (278.54G) exceeds available HBM (15.75G)".
_NEEDED_RES = (re.compile(r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm", re.IGNORECASE),
               re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM", re.IGNORECASE))
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class ConfigError(Exception):
    """The configuration cannot be built on the topology (not a memory question)."""


# --------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------


def topology_devices(name: str, chip_config: str = "auto") -> list[jax.Device]:
    """Compile-only devices of a libtpu topology (no TPU needed)."""
    from jax.experimental import topologies

    # libtpu guards a TPU host with a lockfile; compiling for a described topology uses no TPU,
    # so several fit checks (or one beside a TPU job's leftover lockfile) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {}
    if chip_config == "auto":
        if name.startswith("v4:"):
            kwargs["chip_config_name"] = "megacore"
    elif chip_config != "default":
        kwargs["chip_config_name"] = chip_config
    try:
        return list(topologies.get_topology_desc(name, "tpu", **kwargs).devices)
    except Exception as err:  # libtpu raises JaxRuntimeError / ValueError / RuntimeError
        raise ConfigError(f"libtpu does not know the topology {name!r} ({kwargs or 'default'}): "
                          f"{err}. Install libtpu (pip install 'jax[tpu]') and use names such "
                          f"as v5p:4x4x4, v4:4x4x4, v5e:2x2.") from err


def devices_per_chip(devices: list[jax.Device]) -> int:
    chips = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    return max(1, len(devices) // len(chips))


def device_budget(devices: list[jax.Device], hbm_gib: float) -> tuple[int, float, str]:
    """(HBM bytes per device, peak bf16 FLOP/s per device, where the HBM figure came from)."""
    kind = devices[0].device_kind
    per_chip = devices_per_chip(devices)
    chip = CHIPS.get(kind)
    peak = chip.peak_flops / per_chip if chip else float("nan")
    if hbm_gib > 0:
        return int(hbm_gib * GIB), peak, "--hbm_gib"
    if chip is None:
        raise ConfigError(f"Unknown device kind {kind!r}; pass --hbm_gib (known: {sorted(CHIPS)}).")
    source = f"{kind}: {chip.hbm_bytes / GIB:g} GiB per chip / {per_chip} device(s) per chip"
    return chip.hbm_bytes // per_chip, peak, source


# --------------------------------------------------------------------------------------------
# Analytic FLOPs (dense matmuls: 2 per parameter per token forward, 6 with the backward pass)
# --------------------------------------------------------------------------------------------


def token_counts(config, decode_steps: int = 0) -> dict[str, int]:
    """Tokens per example through each component."""
    cameras = 2 if preprocessing.wrist_camera(config) == preprocessing.TOKENS else 1
    patches = cameras * vit_lib.num_tokens(config.model.vit, config.image_size)
    decoder = decode_steps or config.max_target_len
    prefix = vlm_lib.num_encoder_image_tokens(config) + config.max_prompt_len
    if vlm_lib.backbone(config.model) == vlm_lib.DECODER_ONLY:   # one sequence [prefix, target]
        return {"vit": patches, "projection": patches, "decoder": prefix + decoder,
                "logits": decoder}
    return {"vit": patches, "projection": patches, "encoder": prefix,
            "decoder": decoder, "logits": decoder}


def analytic_flops(config, counts: dict[str, int], batch: int, factor: int,
                   decode_steps: int = 0) -> float:
    """factor * sum(matmul parameters x tokens) + attention scores, for `batch` examples.

    factor 6 = forward + backward; 2 = forward only. Token embeddings are lookups (no FLOPs);
    the logits projection is counted per decoder token.
    """
    tokens = token_counts(config, decode_steps)
    m = config.model
    logits_params = vlm_lib.model_width(m) * m.vocab_size
    weights = {"vit": counts["vit"], "projection": counts["projection"],
               "decoder": counts["decoder"], "logits": logits_params}
    if "encoder" in tokens:
        weights["encoder"] = counts["encoder"]
    dense = sum(weights[k] * tokens[k] for k in weights)
    # Attention: QK^T and AV, 2 matmuls of 2*q*k*(heads*head_dim) FLOPs each per layer.
    attention = m.vit.depth * tokens["vit"] ** 2 * m.vit.width
    if "encoder" in tokens:
        ed_inner = m.encdec.num_heads * m.encdec.head_dim
        enc, dec = tokens["encoder"], tokens["decoder"]
        attention += (m.encdec.num_encoder_layers * enc * enc * ed_inner
                      + m.encdec.num_decoder_layers * (dec * dec + dec * enc) * ed_inner)
    else:   # prefix + target, all pairs computed (the mask hides some)
        attention += m.llm.depth * tokens["decoder"] ** 2 * m.llm.num_heads * m.llm.head_dim
    return float(batch) * (factor * dense + factor * attention)


# --------------------------------------------------------------------------------------------
# Building the programs
# --------------------------------------------------------------------------------------------


def action_tokenizer(config) -> actions_lib.ActionTokenizer:
    """The action token mapping of the config's vocabulary (bounds do not change the program)."""
    bounds = actions_lib.ActionBounds(tuple([-1.0] * 7), tuple([1.0] * 7))
    return actions_lib.ActionTokenizer.from_config(config, bounds=bounds)


def lower_train(config, mesh) -> tuple[Any, int, int]:
    """(lowered train step, parameter count, global batch)."""
    setup = train_state.make_setup(config, mesh)
    tables = train_state.ActionTables.build(action_tokenizer(config), int(config.model.vocab_size))
    num_sources = len(config.data.sources)
    step = train_state.make_train_step(setup, tables, num_sources)
    gbs = int(config.data.global_batch_size)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=setup.batch_sharding[k])
             for k, v in train_state.batch_spec(config, gbs).items()}
    return step.lower(setup.abstract_state, batch), params_lib.count(
        setup.abstract_state.params), gbs


def lower_decode(config, mesh, batch_size: int) -> tuple[Any, int, int]:
    """(lowered action-decoding loop with bfloat16 parameters, parameter count, batch)."""
    from rt2_jax.models.vlm import VLM

    model = VLM.from_config(config)
    rules = sharding.rules_from_config(config)
    boxed = train_state._abstract_boxed_params(model, config)
    param_sharding = sharding.logical_sharding(boxed, mesh, rules)

    def to_bf16(a, s):
        dtype = jnp.bfloat16 if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype
        return jax.ShapeDtypeStruct(a.shape, dtype, sharding=s)

    params = jax.tree.map(to_bf16, params_lib.unbox(boxed), param_sharding)
    dp = sharding.data_parallel_size(mesh, rules)
    batch_size = batch_size or dp
    spec = train_state.batch_spec(config, batch_size)

    def shard(x):
        s = (sharding.batch_sharding(mesh, rules, len(x.shape)) if batch_size % dp == 0
             else sharding.replicated(mesh))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    inputs = [shard(spec[k]) for k in ("image", "encoder_tokens", "encoder_mask")]
    wrist = vlm_lib.wrist_inputs({k: shard(v) for k, v in spec.items()})
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    decoder = decoding.Decoder(model, action_tokenizer(config), int(config.model.vocab_size),
                               mesh=mesh, rules=rules)
    lowered = decoder.lower("action", params, *inputs, rng, wrist=wrist)
    return lowered, params_lib.count(params), batch_size


def unrolled_flops(config, step: str, batch: int) -> float:
    """FLOPs of one whole step from XLA's cost analysis of the unscanned, unpartitioned program
    (lowered for one CPU device, never compiled).

    XLA's cost analysis counts a while-loop body once, so the compiled program (layers scanned,
    micro-batches scanned) under-reports by about the number of layers. Unrolling the layer
    stacks and using one full-batch pass counts every layer; it includes the rematerialized
    forward passes. In decode, the per-token loop body (one decoder step) is still counted once;
    the prefill (ViT + encoder) dominates it.
    """
    c = copy.deepcopy(config)
    with c.unlocked():
        c.model.scan_layers = False
        c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, 1, 1
        c.train.grad_accum_steps = 1
        if step == "train":
            c.data.global_batch_size = batch
    mesh = sharding.make_mesh(c, jax.devices("cpu")[:1])
    lowered = lower_train(c, mesh)[0] if step == "train" else lower_decode(c, mesh, batch)[0]
    return float(_cost(lowered).get("flops", float("nan")))


def _parse_oom(message: str) -> int | None:
    """Bytes XLA says the program needs, from its out-of-memory message (when it says)."""
    for pattern in _NEEDED_RES:
        match = pattern.search(message)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    return None


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def check(config, topology: str, step: str = "train", *, chip_config: str = "auto",
          hbm_gib: float = 0.0, decode_batch: int = 0, count_flops: bool = True
          ) -> dict[str, Any]:
    """Compiles `step` of `config` for `topology`; returns the report (see module docstring)."""
    devices = topology_devices(topology, chip_config)
    hbm, peak, hbm_source = device_budget(devices, hbm_gib)
    try:
        mesh = sharding.make_mesh(config, devices)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    report: dict[str, Any] = {
        "config_name": "", "topology": topology, "step": step,
        "device_kind": devices[0].device_kind, "devices": len(devices),
        "devices_per_chip": devices_per_chip(devices),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "hbm_bytes_per_device": int(hbm), "hbm_source": hbm_source,
    }
    start = time.perf_counter()
    try:
        if step == "train":
            lowered, num_params, batch = lower_train(config, mesh)
        else:
            lowered, num_params, batch = lower_decode(config, mesh, decode_batch)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    report["lower_s"] = round(time.perf_counter() - start, 2)
    report["params"] = num_params
    report["batch"] = batch
    counts = param_count.count_by_component(param_count.abstract_params(config))
    decode_steps = 1 + 8 if step == "decode" else 0  # start token + 8 action tokens
    report["analytic_flops_per_step"] = analytic_flops(
        config, counts, batch, 6 if step == "train" else 2, decode_steps)

    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as err:  # XlaRuntimeError; its type moved between jax versions
        message = str(err)
        if not any(p.lower() in message.lower() for p in _OOM_PATTERNS):
            raise
        report["compile_s"] = round(time.perf_counter() - start, 2)
        needed = _parse_oom(message)
        report.update(bytes_per_device=needed, fits=False,
                      headroom_bytes=None if needed is None else hbm - needed,
                      error=" ".join(message.split())[:2000])
        return report
    report["compile_s"] = round(time.perf_counter() - start, 2)

    mem = compiled.memory_analysis()
    parts = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "generated_code_bytes": int(mem.generated_code_size_in_bytes),
    }
    total = (parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"]
             - parts["alias_bytes"])
    report.update(parts)
    report.update(bytes_per_device=total, fits=total <= hbm, headroom_bytes=hbm - total)
    # The compiled program's cost_analysis() is one device's share of the SPMD-partitioned
    # program, with each scanned loop body counted once (see `unrolled_flops`).
    report["xla_compiled_flops_per_device"] = float(_cost(compiled).get("flops", float("nan")))
    if count_flops:
        start = time.perf_counter()
        flops = unrolled_flops(config, step, batch)
        report.update(
            flops_per_step=flops, flops_per_device=flops / len(devices),
            flops_vs_analytic=flops / report["analytic_flops_per_step"],
            flops_s=round(time.perf_counter() - start, 2), peak_flops_per_device=peak,
            step_time_at_peak_s=flops / len(devices) / peak if peak == peak else None)
    return report


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _gib(n) -> str:
    """Bytes in GiB, or MiB below 0.1 GiB (signed: a negative headroom is a shortfall)."""
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 1024**2:.2f} MiB"


def format_table(r: dict[str, Any]) -> str:
    rows = [("config", r.get("config_name", "")), ("topology", r["topology"]),
            ("step", r["step"]),
            ("devices", f"{r['devices']} x {r['device_kind']} "
                        f"({r['devices_per_chip']} per chip)"),
            ("mesh", " ".join(f"{k}={v}" for k, v in r["mesh"].items())),
            ("parameters", f"{r['params']:,} ({r['params'] / 1e9:.3g} B)"),
            ("batch", f"{r['batch']} (global)")]
    if "argument_bytes" in r:
        rows += [("arguments", _gib(r["argument_bytes"])), ("outputs", _gib(r["output_bytes"])),
                 ("temporaries", _gib(r["temp_bytes"])), ("aliased", _gib(r["alias_bytes"]))]
    rows += [("per device", _gib(r["bytes_per_device"])),
             ("HBM per device", f"{_gib(r['hbm_bytes_per_device'])} ({r['hbm_source']})"),
             ("fits", f"{'yes' if r['fits'] else 'NO (does not fit)'}, headroom "
                      f"{_gib(r['headroom_bytes'])}")]
    if "flops_per_step" in r:
        rows += [("FLOPs per step", f"{r['flops_per_step']:.4g} total, "
                                    f"{r['flops_per_device']:.4g} per device (XLA, unrolled)"),
                 ("analytic FLOPs", f"{r['analytic_flops_per_step']:.4g} "
                                    f"(XLA / analytic = {r['flops_vs_analytic']:.2f})")]
        if r.get("step_time_at_peak_s"):
            rows.append(("step at 100% MFU", f"{r['step_time_at_peak_s'] * 1e3:.3g} ms"))
    rows += [("lower / compile", f"{r['lower_s']:.1f} s / {r['compile_s']:.1f} s")]
    if "error" in r:
        rows.append(("XLA", r["error"][:300]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _libtpu_version() -> str:
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return ""


def command_line(argv: list[str]) -> str:
    return "python -m rt2_jax.tools.aot " + " ".join(shlex.quote(a) for a in argv[1:])


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_string("topology", "v5p:4x4x4",
                        "libtpu topology name, e.g. v5p:4x4x4, v4:4x4x4, v5e:2x2.")
    flags.DEFINE_enum("step", "train", ["train", "decode"],
                      "train: the full training step; decode: masked action decoding.")
    flags.DEFINE_string(
        "chip_config", "auto",
        "libtpu chip config: auto (megacore on v4, as pods run it: one device per chip), "
        "default (one device per TensorCore), or a libtpu name such as megacore.")
    flags.DEFINE_float("hbm_gib", 0.0, "Per-device HBM in GiB to check against (0 = the chip's).")
    flags.DEFINE_integer("decode_batch", 0,
                         "--step=decode batch size (0 = the data-parallel size).")
    flags.DEFINE_bool("count_flops", True,
                      "Also count FLOPs on the unrolled program (see unrolled_flops).")
    flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
    flags.DEFINE_string("out", "", "Also write PREFIX.json and PREFIX.txt.")
    flags.mark_flag_as_required("config")


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        report = check(f.config, f.topology, f.step, chip_config=f.chip_config,
                       hbm_gib=f.hbm_gib, decode_batch=f.decode_batch,
                       count_flops=f.count_flops)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    config_path = f["config"].config_filename
    report = {"command": command_line(sys.argv), **report,
              "config_name": Path(config_path).stem, "jax": jax.__version__,
              "libtpu": _libtpu_version()}
    table = format_table(report)
    print(json.dumps(report, indent=1) if f.json else table)
    if f.out:
        Path(f.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
        Path(f.out + ".txt").write_text(f"$ {report['command']}\n{table}\n")
    if not report["fits"]:
        print(f"does not fit: needs {_gib(report['bytes_per_device'])} per device, "
              f"{_gib(report['hbm_bytes_per_device'])} available.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
