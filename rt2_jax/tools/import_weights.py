"""Start from open weights: an image tower and an encoder-decoder imported into this model.

    python -m rt2_jax.tools.import_weights --config=configs/siglip_t5_base.py \
        --vit=siglip-base-patch16-224 --encdec=flan-t5-base --out=imports/siglip_t5_base

`--vit`: a big_vision `.npz` (SigLIP, ViT; flattened `a/b/c` keys, blocks stacked or not) or a
Hugging Face `SiglipVisionModel` / `SiglipModel` directory. `--encdec`: a Hugging Face T5 v1.1 /
mT5 / UL2 / Flan-T5 directory (safetensors, one file or shards with an index). Either may be
left out. `--paligemma`: a big_vision PaliGemma `.npz` (`img/...` SigLIP and its projection,
`llm/...` Gemma) into a decoder-only config (configs/paligemma_3b.py), alone:

    python -m rt2_jax.tools.import_weights --config=configs/paligemma_3b.py \
        --paligemma=paligemma-3b-pt-224.npz --tokenizer=paligemma_tokenizer.model \
        --out=imports/paligemma_3b
 The output directory holds `params/` (orbax, the layout exports use, scanned or not
as the config says), the checkpoint's sentencepiece model as `tokenizer.model` when the
encoder-decoder directory has one, and `import_report.json`. Train from it with
`--config.train.init_from=OUT` (and `init_from_regex` to take only part of it).

The import checks everything before it reads a weight: the checkpoint's config against the
config's dimensions, every source tensor's shape and dtype against its target (an error names
both tensors and both shapes), and the vocabulary against `config.actions.mapping`. It then
streams: one source tensor is in memory at a time, converted straight into the preallocated
output, so peak host memory is about the output's size plus the largest tensor (measured and
printed). It reports every source tensor used and unused, every target left at its
initialization (the values training would give it with `config.seed`, e.g. the image projection
`img/head`) and position embeddings resized to another image size (bilinear, as big_vision).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rt2_jax.models import layers
from rt2_jax.models import params as params_lib
from rt2_jax.tools import weight_maps, weight_sources
from rt2_jax.tools.weight_maps import Rule

REPORT_FILE = "import_report.json"
_TOKENIZER_NAMES = ("spiece.model", "tokenizer.model", "sentencepiece.model")
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Slot:
    """One target tensor in our unscanned naming: parameter `path`, layer `index` of a stack."""

    path: str
    index: int | None
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return self.path if self.index is None else f"{self.path}[{self.index}]"


def target_slots(abstract_flat: dict) -> dict[str, Slot]:
    """{unscanned name: Slot}: a scanned stack `.../layers/...` [L, ...] gives L slots named
    `.../layers_{i}/...`, as the unscanned model names them."""
    slots = {}
    for path, leaf in abstract_flat.items():
        parts = path.split("/")
        stack = next((i for i, p in enumerate(parts) if p in params_lib.STACK_NAMES), None)
        if stack is None:
            slots[path] = Slot(path, None, tuple(leaf.shape))
            continue
        for layer in range(leaf.shape[0]):
            name = "/".join([*parts[:stack], f"{parts[stack]}_{layer}", *parts[stack + 1:]])
            slots[name] = Slot(path, layer, tuple(leaf.shape[1:]))
    return slots


@dataclasses.dataclass
class Part:
    """One checkpoint to import: its reader, a label for messages and its rules."""

    label: str
    source: weight_sources.SafetensorsSource | weight_sources.NpzSource
    kind: str
    rules: list[Rule]
    notes: tuple[str, ...] = ()


def _vit_part(path: str, model_config, targets: dict[str, tuple]) -> Part:
    source = weight_sources.open_source(path, "vit")
    infos = source.infos()
    if isinstance(source, weight_sources.NpzSource):
        weight_maps.check_vit_config(model_config, path)
        rules = weight_maps.big_vision_rules(infos, targets, path)
        cls = [k for k in infos if (k.endswith("/cls") or k == "cls") and "img/cls" not in targets]
        notes = tuple(f"{path}: {k} is a class token, which this ViT does not have: its patch "
                      "tokens are computed without it, so they differ from the original "
                      "model's until fine-tuning adapts them." for k in cls)
        return Part(f"image tower {path}", source, "big_vision .npz", rules, notes)
    where = os.path.join(path, "config.json")
    kind, hf = weight_maps.hf_vision_config(weight_sources.hf_config(path), where)
    weight_maps.check_vit_config(model_config, where, hf, kind)
    if kind == "vit":
        rules = weight_maps.vit_hf_rules(infos, targets, path, model_config.vit.depth)
        return Part(f"image tower {path}", source, "Hugging Face ViT", rules)
    rules = weight_maps.siglip_hf_rules(infos, targets, path, model_config.vit.depth)
    return Part(f"image tower {path}", source, "Hugging Face SigLIP", rules)


def _encdec_part(path: str, model_config) -> Part:
    if os.path.isfile(path):
        raise ValueError(f"--encdec={path}: expected a Hugging Face T5 / mT5 / UL2 directory "
                         "(config.json + *.safetensors).")
    hf = weight_sources.hf_config(path)   # explains a T5X directory
    weight_maps.check_t5_config(hf, model_config, os.path.join(path, "config.json"))
    source = weight_sources.open_source(path, "encdec")
    rules = weight_maps.t5_rules(source.infos(), model_config, hf)
    return Part(f"encoder-decoder {path}", source, f"Hugging Face {hf['model_type']}", rules)


def _paligemma_part(path: str, model_config, targets: dict[str, tuple]) -> Part:
    source = weight_sources.open_source(path, "paligemma")
    if not isinstance(source, weight_sources.NpzSource):
        raise ValueError(f"--paligemma={path}: expected big_vision's PaliGemma .npz file.")
    weight_maps.check_paligemma_config(model_config, path)
    rules = weight_maps.paligemma_rules(source.infos(), targets, path)
    return Part(f"PaliGemma {path}", source, "big_vision PaliGemma .npz", rules)


def _is_floating(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def check_plan(parts: list[Part], slots: dict[str, Slot], out_dtype) -> None:
    """Every rule's source exists, its shape and dtype fit its targets, and no target is
    written twice. Raises one ValueError listing every problem."""
    problems, written = [], {}
    for part in parts:
        infos = part.source.infos()
        missing = [r.source for r in part.rules if r.source not in infos]
        if missing:
            problems.append(
                f"{part.label}: {len(missing)} tensor(s) the {part.kind} layout needs are "
                f"missing, e.g. {missing[:5]} (the checkpoint has e.g. {sorted(infos)[:5]}); is "
                "it the right kind of checkpoint for this flag?")
        for rule in part.rules:
            info = infos.get(rule.source)
            if info is None:
                continue
            unknown = [t for t in rule.targets if t not in slots]
            if unknown:
                problems.append(f"{info.file}: tensor {rule.source} would fill {unknown}, which "
                                "the config's model does not have; the config's depth or options "
                                "differ from the checkpoint's.")
                continue
            for target in rule.targets:
                if target in written:
                    problems.append(f"target {slots[target]} would be written by both "
                                    f"{written[target]} and {rule.source}.")
                written[target] = rule.source
            if not _is_floating(info.dtype):
                target = slots[rule.targets[0]] if rule.targets else rule.same_as
                problems.append(f"dtype mismatch: {info.file}: tensor {rule.source} {info.shape} "
                                f"is {info.dtype}, but target {target} is a "
                                f"{np.dtype(out_dtype).name} parameter (floating).")
                continue
            target_shape = slots[rule.targets[0]].shape if rule.targets else None
            if rule.same_as:
                target_shape = slots[rule.same_as].shape
                ok = info.shape == target_shape
            elif isinstance(rule.convert, weight_maps.PosEmb):
                ok = rule.convert.accepts(info.shape, target_shape)
            else:
                ok = info.shape == rule.expected_source_shape(target_shape)
            if not ok:
                target = rule.same_as or str(slots[rule.targets[0]])
                count = f" ({len(rule.targets)} layers)" if len(rule.targets) > 1 else ""
                expected = (target_shape if rule.same_as
                            or isinstance(rule.convert, weight_maps.PosEmb)
                            else rule.expected_source_shape(target_shape))
                problems.append(f"shape mismatch: {info.file}: tensor {rule.source} has shape "
                                f"{info.shape}, but target {target}{count} has shape "
                                f"{target_shape} and needs a source of shape {expected} "
                                f"({rule.convert}).")
    if problems:
        raise ValueError(f"cannot import ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems[:40]))


def initial_values(config, paths: list[str], seed: int) -> dict[str, np.ndarray]:
    """The values training would initialize `paths` to with `seed` (only these are computed:
    the rest of the initialization is dead code that XLA drops)."""
    from rt2_jax import train_state
    from rt2_jax.models.vlm import VLM

    if not paths:
        return {}
    model = VLM.from_config(config)

    def init(rng):
        flat = params_lib.flatten(train_state.initial_params(model, config, rng))
        return {p: flat[p] for p in paths}

    return {p: np.asarray(v) for p, v in jax.jit(init)(jax.random.PRNGKey(seed)).items()}


def _write(rule: Rule, x: np.ndarray, view: np.ndarray,
           position: np.ndarray | None = None) -> None:
    """Converts `x` straight into `view` (a slot of the output buffer), without a second copy
    of the tensor where the conversion is a reshape or transpose."""
    convert = rule.convert
    if isinstance(convert, weight_maps.Linear):
        n_in = convert.n_in
        rows = int(np.prod(view.shape[:n_in]))
        np.copyto(view.reshape(rows, -1), x.T, casting="unsafe")
        if isinstance(convert, weight_maps.ScaledLinear):
            view *= np.asarray(convert.scale, view.dtype)
    elif isinstance(convert, weight_maps.ClassToken):
        np.copyto(view, convert(x, view.shape, position), casting="unsafe")
    elif isinstance(convert, weight_maps.PosEmb):
        np.copyto(view, convert(x.astype(np.float32), view.shape), casting="unsafe")
    else:
        np.copyto(view, convert(x, view.shape), casting="unsafe")


def _equal_in_chunks(stored: np.ndarray, x: np.ndarray, rows: int = 4096) -> bool:
    return all(np.array_equal(stored[i:i + rows], x[i:i + rows].astype(stored.dtype))
               for i in range(0, x.shape[0], rows))


def current_rss() -> int:
    """Resident set size now (bytes), from /proc; the peak so far where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    """Peak resident set size of this process so far (bytes; Linux reports KiB). Linux syncs
    threads' page counts into it lazily, so it can trail the current size a little."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, current_rss())


def tokenizer_support(path: str) -> dict:
    """Which action mappings the vocabulary at `path` supports: {mapping: "ok" or why not}."""
    from rt2_jax import actions
    from rt2_jax import tokenizer as tokenizer_lib

    tok = tokenizer_lib.Tokenizer(path)
    support = {"vocab_size": tok.vocab_size}
    for mapping, ids_fn in (("integers", actions.integer_action_ids),
                            ("least_frequent", actions.least_frequent_action_ids)):
        try:
            ids_fn(tok)
            support[mapping] = "ok"
        except ValueError as e:
            support[mapping] = str(e)
    return support


def find_tokenizer(encdec: str | None) -> str | None:
    if not encdec or not os.path.isdir(encdec):
        return None
    return next((os.path.join(encdec, n) for n in _TOKENIZER_NAMES
                 if os.path.exists(os.path.join(encdec, n))), None)


def import_weights(config: ml_collections.ConfigDict, out: str, vit: str | None = None,
                   encdec: str | None = None, tokenizer: str | None = None,
                   dtype: str | None = None, log: Callable[[str], None] = print,
                   paligemma: str | None = None) -> dict:
    """Imports `vit` and/or `encdec` (or `paligemma`) into `config`'s model and writes `out`
    (see the module docstring). Returns the report (also written to
    `out/import_report.json`)."""
    from rt2_jax import checkpoints
    from rt2_jax.models import vlm
    from rt2_jax.tools import param_count

    if not vit and not encdec and not paligemma:
        raise ValueError("nothing to import: give --vit and/or --encdec, or --paligemma.")
    if paligemma and (vit or encdec):
        raise ValueError("--paligemma holds the image tower and the language model; give it "
                         "alone, without --vit or --encdec.")
    if encdec and vlm.backbone(config.model) != vlm.ENCODER_DECODER:
        raise ValueError("--encdec imports an encoder-decoder, but config.model.backbone is "
                         f"{vlm.backbone(config.model)!r}.")
    if os.path.exists(os.path.join(out, "params")):
        raise FileExistsError(f"{out} already holds params/; choose a new --out directory.")
    out_dtype = np.dtype(layers.dtype_from_name(dtype or config.model.param_dtype))
    abstract = params_lib.flatten(param_count.abstract_params(config))
    slots = target_slots(abstract)

    parts = []
    if vit:
        parts.append(_vit_part(vit, config.model, {n: s.shape for n, s in slots.items()}))
    if encdec:
        parts.append(_encdec_part(encdec, config.model))
    if paligemma:
        parts.append(_paligemma_part(paligemma, config.model,
                                     {n: s.shape for n, s in slots.items()}))
    check_plan(parts, slots, out_dtype)

    report: dict = {"config_model": json.loads(config.model.to_json()), "dtype": out_dtype.name,
                    "layout": "scanned" if config.model.scan_layers else "unscanned",
                    "sources": {}, "used": [], "unused": [], "left_at_init": [], "resized": [],
                    "notes": [note for part in parts for note in part.notes]}
    tokenizer = tokenizer or find_tokenizer(encdec)
    if tokenizer:
        report["tokenizer"] = _check_tokenizer(tokenizer, config)

    filled = {t for part in parts for rule in part.rules for t in rule.targets}
    left = [name for name in slots if name not in filled]
    seed = int(config.seed)
    init = initial_values(config, sorted({slots[n].path for n in left}), seed)
    buffers = {path: np.empty(leaf.shape, out_dtype) for path, leaf in abstract.items()}
    for name in left:
        slot = slots[name]
        value = init[slot.path] if slot.index is None else init[slot.path][slot.index]
        np.copyto(_view(buffers, slot), value, casting="unsafe")
        report["left_at_init"].append({"target": str(slot), "shape": list(slot.shape)})

    rss_start = current_rss()
    try:
        largest = max([_stream(part, slots, buffers, report) for part in parts])
    finally:
        for part in parts:
            part.source.close()
    # ru_maxrss is synced lazily and the current size can shrink between samples, so a peak is
    # never reported below a size this function itself sampled earlier.
    peak_streaming = max(peak_rss(), rss_start)

    out = checkpoints.absolute(out)
    os.makedirs(out, exist_ok=True)
    write_params(os.path.join(out, "params"), params_lib.unflatten(buffers))
    output_bytes = sum(b.nbytes for b in buffers.values())
    report["memory"] = {
        "output_bytes": output_bytes, "largest_source_tensor_bytes": largest,
        "rss_before_streaming_bytes": rss_start, "peak_rss_streaming_bytes": peak_streaming,
        "peak_rss_bytes": max(peak_rss(), peak_streaming),
        "parameters": int(sum(b.size for b in buffers.values()))}
    if tokenizer:
        shutil.copyfile(tokenizer, os.path.join(out, "tokenizer.model"))
    with open(os.path.join(out, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=1)
    _log_report(report, out, log)
    return report


def _stream(part: Part, slots: dict[str, Slot], buffers: dict[str, np.ndarray],
            report: dict) -> int:
    """Reads `part`'s tensors one at a time into `buffers`, recording them in `report`;
    returns the largest tensor's size in bytes."""
    infos = part.source.infos()
    report["sources"][part.label] = {"path": part.source.path, "kind": part.kind,
                                     "tensors": len(infos)}
    used, largest = set(), 0
    for rule in part.rules:
        info = infos[rule.source]
        x = part.source.read(rule.source)
        largest = max(largest, x.nbytes)
        used.add(rule.source)
        entry = {"source": rule.source, "file": info.file, "shape": list(info.shape),
                 "dtype": info.dtype.name, "conversion": str(rule.convert)}
        if rule.same_as:
            if not _equal_in_chunks(_view(buffers, slots[rule.same_as]), x):
                raise ValueError(f"{info.file}: tensor {rule.source} differs from the tensor "
                                 f"imported as {rule.same_as}; this model has one shared "
                                 "embedding, so the checkpoint does not fit it.")
            entry["targets"] = [f"(checked equal to {rule.same_as})"]
        else:
            targets = [slots[t] for t in rule.targets]
            position = (part.source.read(rule.convert.position_key)
                        if isinstance(rule.convert, weight_maps.ClassToken) else None)
            for i, slot in enumerate(targets):
                _write(rule, x if len(targets) == 1 else x[i], _view(buffers, slot), position)
            entry["targets"] = [str(s) for s in targets]
            if (isinstance(rule.convert, weight_maps.PosEmb)
                    and x.shape[-2] - rule.convert.class_token != targets[0].shape[1]):
                report["resized"].append({
                    "target": str(targets[0]), "from": list(info.shape),
                    "to": list(targets[0].shape),
                    "method": "bilinear (scipy.ndimage.zoom, order 1), as big_vision"})
        report["used"].append(entry)
        del x
    report["unused"] += [{"source": k, "file": i.file, "shape": list(i.shape),
                          "dtype": i.dtype.name} for k, i in infos.items() if k not in used]
    return largest


def write_params(path: str, tree: dict) -> None:
    """Saves a tree of numpy arrays as orbax writes exports (StandardCheckpointer restores it),
    synchronously and without orbax's defensive copy of every host array (nothing changes them
    while it writes) and without compression (weights barely compress): the write then needs
    no memory beyond the arrays themselves, where the default doubles the peak."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import type_handlers

    registry = type_handlers.create_type_handler_registry(
        (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(path, args=ocp.args.PyTreeSave(tree))


def _view(buffers: dict[str, np.ndarray], slot: Slot) -> np.ndarray:
    buffer = buffers[slot.path]
    return buffer if slot.index is None else buffer[slot.index]


def _check_tokenizer(path: str, config) -> dict:
    """The vocabulary's action-mapping support; refuses a config whose mapping it cannot do."""
    support = tokenizer_support(path)
    support["path"] = path
    if support["vocab_size"] > config.model.vocab_size:
        raise ValueError(f"{path} has {support['vocab_size']} pieces but config.model.vocab_size "
                         f"is {config.model.vocab_size}.")
    mapping = config.actions.mapping
    if support.get(mapping) != "ok":
        others = [m for m in ("integers", "least_frequent") if support.get(m) == "ok"]
        hint = (f" Set --config.actions.mapping={others[0]}." if others else "")
        raise ValueError(f"config.actions.mapping={mapping!r} does not work with the imported "
                         f"vocabulary: {support.get(mapping)}.{hint}")
    return support


def _log_report(report: dict, out: str, log) -> None:
    for label, source in report["sources"].items():
        log(f"{label} ({source['kind']}, {source['tensors']} tensors):")
    for entry in report["used"]:
        log(f"  used    {entry['source']} {tuple(entry['shape'])} {entry['dtype']} -> "
            f"{', '.join(entry['targets'])} [{entry['conversion']}]")
    for entry in report["unused"]:
        log(f"  unused  {entry['source']} {tuple(entry['shape'])} {entry['dtype']} "
            f"({entry['file']})")
    for entry in report["left_at_init"]:
        log(f"  left at initialization (seed of the config): {entry['target']} "
            f"{tuple(entry['shape'])}")
    for entry in report["resized"]:
        log(f"  resized {entry['target']}: {tuple(entry['from'])} -> {tuple(entry['to'])}, "
            f"{entry['method']}")
    for note in report["notes"]:
        log(f"  note    {note}")
    tok = report.get("tokenizer")
    if tok:
        for mapping in ("integers", "least_frequent"):
            verdict = "supported" if tok[mapping] == "ok" else f"not supported: {tok[mapping]}"
            log(f"  action mapping {mapping}: {verdict}")
    m = report["memory"]
    log(f"Wrote {out}/params ({report['layout']}, {report['dtype']}): {m['parameters']:,} "
        f"parameters, {m['output_bytes'] / MiB:,.1f} MiB; {len(report['used'])} source tensors "
        f"used, {len(report['unused'])} unused, {len(report['left_at_init'])} targets left at "
        "initialization.")
    log(f"Peak host memory (RSS): {m['peak_rss_streaming_bytes'] / MiB:,.1f} MiB while "
        f"streaming, {m['peak_rss_bytes'] / MiB:,.1f} MiB with the write; "
        f"{m['rss_before_streaming_bytes'] / MiB:,.1f} MiB before the first tensor was read "
        f"(libraries, compiled initializer); output {m['output_bytes'] / MiB:,.1f} MiB + largest "
        f"source tensor {m['largest_source_tensor_bytes'] / MiB:,.1f} MiB.")
    tok_flag = " --config.tokenizer.model_path=" + os.path.join(out, "tokenizer.model") \
        if tok else ""
    log(f"Train from it: python -m rt2_jax.train --config=... --config.train.init_from={out}"
        f"{tok_flag} (add --config.train.init_from_regex='^img/' to take only the image tower).")


def main(argv):
    from absl import flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    f = flags.FLAGS
    if not f["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.ERROR)   # orbax's INFO/WARNING lines; -v 0 shows
    import_weights(f.config, f.out, vit=f.vit, encdec=f.encdec, tokenizer=f.tokenizer,
                   dtype=f.dtype, paligemma=f.paligemma)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_string("vit", None, "Image tower: big_vision .npz or Hugging Face SigLIP dir.")
    flags.DEFINE_string("encdec", None, "Encoder-decoder: Hugging Face T5 / mT5 / UL2 dir.")
    flags.DEFINE_string("paligemma", None, "big_vision PaliGemma .npz (img/ + llm/) for a "
                        "decoder-only config; alone.")
    flags.DEFINE_string("out", None, "Output directory (train with config.train.init_from=it).")
    flags.DEFINE_string("tokenizer", None, "Sentencepiece model to check and copy (default: "
                        "the encoder-decoder directory's spiece.model).")
    flags.DEFINE_string("dtype", None, "Parameter dtype written (default: "
                        "config.model.param_dtype).")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
