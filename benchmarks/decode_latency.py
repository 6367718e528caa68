"""Action-decode latency: prefill vs. cached decode vs. no-cache decode (and HF T5); prints JSON.

  python -m benchmarks.decode_latency [--config=configs/bench_small.py] [--rounds=7]
      [--reps=10] [--warmup=3] [--batch_sizes=1,8] [--out=FILE] [--hf=auto|on|off]

Timing is interleaved to survive a shared, noisy machine: after `--warmup` untimed calls of each
variant, `--rounds` rounds each time every variant for `--reps` calls (ended with
`block_until_ready`), the variants' order rotating from round to round. A variant's figure is the
median over rounds of its per-round median, with the spread (min, max) of those per-round
medians; ratios (overhead_ratio, speedup_vs_hf) are taken within each round, where the variants
shared the machine's state, then their median and spread are reported. Per batch size:
  prefill_ms          a jitted `VLM.prefill`: ViT + encoder + the first decoder step (a),
  decode_ms           the jitted loop behind `Decoder.actions`: prefill + 7 cached steps (b),
  decode_nocache_ms   a jitted `fori_loop` that reruns the teacher-forced decoder over the whole
                      (fixed-length, causally masked) prefix at each of the 8 steps; encoder output
                      computed once; same per-position masks (c),
  vit_ms              the image tower alone; decode_excl_vit_ms = decode_ms - vit_ms,
  actions_call_ms     `Decoder.actions` end to end (host conversions and bin decoding included).
overhead_ratio = decode_ms / prefill_ms at batch 1 (8 action tokens cost this much more than one).

With torch and transformers installed (the `parity` extra), it also times transformers'
`T5ForConditionalGeneration.generate` on the same encoder-decoder weights: 8 new tokens, greedy,
a LogitsProcessor applying the same per-position masks, `inputs_embeds` = our image + prompt
embeddings (220 positions), `torch.inference_mode()`, torch threads = CPU cores. HF's time
excludes the ViT, so `speedup_vs_hf` compares it with `decode_excl_vit_ms` (batch 1);
`speedup_vs_hf_incl_vit` compares it with the full `decode_ms`. Nothing is downloaded.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks import output
from rt2_jax import actions, decoding, tokenizer
from rt2_jax.models import params as params_lib
from rt2_jax.models import vlm
from rt2_jax.models.vlm import VLM

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_small.py", "Model config.")
_REPS = flags.DEFINE_integer("reps", 10, "Timed calls per variant and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved rounds over all variants.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls before timing (the first compiles).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")
_HF = flags.DEFINE_enum("hf", "auto", ["auto", "on", "off"],
                        "Time transformers' T5 generate: auto = when torch/transformers import.")

NUM_ACTION_TOKENS = 8
PROMPTS = ("pick up the red block", "push the blue ball left", "move the green star near the ring",
           "grab the black cylinder", "put the yellow cube on the plate", "open the top drawer",
           "knock the can over", "place the apple in the bowl")


def interleaved_ms(fns: dict, rounds: int, reps: int, warmup: int) -> dict[str, list[float]]:
    """Per variant, its per-round median call time in ms (one entry per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    names = list(fns)
    out = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                jax.block_until_ready(fns[name]())
                times.append(time.perf_counter() - start)
            out[name].append(1e3 * statistics.median(times))
    return out


def median_spread(values) -> tuple[float, list[float]]:
    return (round(statistics.median(values), 3),
            [round(min(values), 3), round(max(values), 3)])


def make_inputs(config, tok, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    size = config.image_size
    image = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    prompts = [tokenizer.robot_prompt(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
    tokens, mask = tok.encode_batch(prompts, config.max_prompt_len)
    return jnp.asarray(image), jnp.asarray(tokens), jnp.asarray(mask, bool)


def encoder_inputs(module: VLM, image, tokens):
    """What the encoder reads: ViT patch tokens projected to d_model, then prompt embeddings."""
    img = module.img(image)
    txt = module.encdec.embed(tokens)
    return jnp.concatenate([img.astype(txt.dtype), txt], axis=1)


def nocache_loop(model: VLM, position_masks: np.ndarray, start_id: int):
    """Jitted action decoding without a KV cache: every step reruns the decoder over the prefix."""
    steps = NUM_ACTION_TOKENS
    decode = lambda module, *args: module.encdec.decode(*args)

    def run(params, image, tokens, mask):
        encoded, enc_mask = model.apply(params, image, tokens, mask, method=VLM.encode)
        masks = jnp.asarray(position_masks)
        prefix = jnp.full((image.shape[0], steps + 1), start_id, jnp.int32)

        def step(t, prefix):
            # Causal self-attention: positions after t do not change position t's logits.
            logits = model.apply(params, encoded, enc_mask, prefix[:, :steps], method=decode)
            logits_t = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
            tok = jnp.argmax(jnp.where(masks[t][None], logits_t, decoding.NEG_INF), axis=-1)
            return jax.lax.dynamic_update_index_in_dim(
                prefix, tok.astype(jnp.int32)[:, None], t + 1, axis=1)

        return jax.lax.fori_loop(0, steps, step, prefix)[:, 1:]

    return jax.jit(run)


def hf_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def hf_generate_fn(config, params, position_masks: np.ndarray, embeds: np.ndarray,
                   mask: np.ndarray):
    """A no-argument callable running HF T5 generate on our weights, and its version string."""
    import torch
    import transformers

    from rt2_jax.tools import hf_t5

    torch.set_num_threads(os.cpu_count() or 1)
    model = hf_t5.build_model(config.model.encdec, config.model.vocab_size, params)
    blocked = torch.from_numpy(~np.asarray(position_masks, bool))

    class PositionMasks(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - 1  # input_ids starts with the decoder start token
            return scores.masked_fill(blocked[step], float("-inf"))

    generation = transformers.GenerationConfig(
        max_new_tokens=NUM_ACTION_TOKENS, do_sample=False, num_beams=1, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=None)
    processors = transformers.LogitsProcessorList([PositionMasks()])
    embeds_t = torch.from_numpy(np.array(embeds, np.float32))
    mask_t = torch.from_numpy(np.asarray(mask, np.int64))

    def generate():
        with torch.inference_mode():
            return model.generate(inputs_embeds=embeds_t, attention_mask=mask_t,
                                  generation_config=generation, logits_processor=processors)

    return generate, f"torch {torch.__version__}, transformers {transformers.__version__}"


class Bench:
    """The model, its random weights, and one jitted function per measurement."""

    def __init__(self, config):
        self.config = config
        self.tok = tokenizer.Tokenizer()
        bounds = actions.ActionBounds.from_stats(None, "fixed", [-1.0] * 7, [1.0] * 7)
        act_tok = actions.ActionTokenizer(bounds, self.tok, config.actions.mapping)
        vocab = config.model.vocab_size
        model = VLM.from_config(config)
        image, tokens, mask = make_inputs(config, self.tok, 1)
        init = jax.jit(lambda rng: model.init(rng, image, tokens, mask,
                                              jnp.zeros((1, 1), jnp.int32)))
        self.params = params_lib.unbox(init(jax.random.PRNGKey(0)))
        self.position_masks = np.asarray(act_tok.position_masks(vocab))
        self.decoder = decoding.Decoder(model, act_tok, vocab)
        # The compiled loop that `Decoder.actions` runs (greedy), called without host work.
        self.decode = self.decoder._fn("action", decoding.Sampling())
        start = self.tok.decoder_start_id
        self.prefill = jax.jit(lambda p, im, t, m: model.apply(
            p, im, t, m, jnp.full((im.shape[0], 1), start, jnp.int32), NUM_ACTION_TOKENS + 1,
            method=VLM.prefill))
        self.vit = jax.jit(lambda p, im: model.apply(p, im, method=lambda m, x: m.img(x)))
        self.embed = jax.jit(lambda p, im, t: model.apply(p, im, t, method=encoder_inputs))
        self.nocache = nocache_loop(model, self.position_masks, start)
        self.rng = jax.random.PRNGKey(0)

    def time_batch(self, batch: int, rounds: int, reps: int, warmup: int, use_hf: bool) -> dict:
        params, rng = self.params, self.rng
        image, tokens, mask = make_inputs(self.config, self.tok, batch)
        ids = np.asarray(self.decode(params, image, tokens, mask, rng)["action_ids"])
        ids_nocache = np.asarray(self.nocache(params, image, tokens, mask))
        if not np.array_equal(ids, ids_nocache):
            raise AssertionError(f"cached and no-cache decoding disagree at batch {batch}: "
                                 f"{ids.tolist()} vs {ids_nocache.tolist()}")
        fns = {
            "prefill_ms": lambda: self.prefill(params, image, tokens, mask),
            "decode_ms": lambda: self.decode(params, image, tokens, mask, rng),
            "decode_nocache_ms": lambda: self.nocache(params, image, tokens, mask),
            "vit_ms": lambda: self.vit(params, image),
            "actions_call_ms": lambda: self.decoder.actions(params, image, tokens, mask),
        }
        r = {}
        if use_hf:
            embeds = np.asarray(self.embed(params, image, tokens))
            full_mask = np.concatenate([np.ones((batch, embeds.shape[1] - mask.shape[1]), bool),
                                        np.asarray(mask)], axis=1)
            generate, r["hf_versions"] = hf_generate_fn(
                self.config, params, self.position_masks, embeds, full_mask)
            r["hf_tokens_match_ours"] = bool(np.array_equal(generate().numpy()[:, 1:], ids))
            fns["hf_generate_ms"] = generate
        rounds_ms = interleaved_ms(fns, rounds, reps, warmup)
        rounds_ms["decode_excl_vit_ms"] = [d - v for d, v in zip(
            rounds_ms["decode_ms"], rounds_ms["vit_ms"], strict=True)]
        rounds_ms["host_postprocess_ms"] = [a - d for a, d in zip(
            rounds_ms["actions_call_ms"], rounds_ms["decode_ms"], strict=True)]
        for name, values in rounds_ms.items():
            r[name], r[name.replace("_ms", "_spread_ms")] = median_spread(values)
        per_round = {"overhead_ratio": [d / p for d, p in zip(
            rounds_ms["decode_ms"], rounds_ms["prefill_ms"], strict=True)]}
        if use_hf:
            per_round["speedup_vs_hf"] = [h / d for h, d in zip(
                rounds_ms["hf_generate_ms"], rounds_ms["decode_excl_vit_ms"], strict=True)]
            per_round["speedup_vs_hf_incl_vit"] = [h / d for h, d in zip(
                rounds_ms["hf_generate_ms"], rounds_ms["decode_ms"], strict=True)]
        for name, values in per_round.items():
            r[name], r[name + "_spread"] = median_spread(values)
        return r


def describe(config, params) -> dict:
    m = config.model
    return {
        "image_size": config.image_size, "patch_size": m.vit.patch_size,
        "vit": {k: m.vit[k] for k in ("width", "depth", "num_heads", "mlp_dim")},
        "encdec": {k: m.encdec[k] for k in (
            "d_model", "num_encoder_layers", "num_decoder_layers", "num_heads", "head_dim",
            "d_ff", "mlp_activation")},
        "vocab_size": m.vocab_size,
        "image_tokens": (config.image_size // m.vit.patch_size) ** 2,
        "prompt_tokens": config.max_prompt_len, "action_tokens": NUM_ACTION_TOKENS,
        "num_params": params_lib.count(params),
    }


PER_BATCH = ("prefill_ms", "decode_ms", "decode_nocache_ms", "vit_ms", "decode_excl_vit_ms",
             "actions_call_ms", "host_postprocess_ms")


def summarize(result: dict, per_batch: dict[str, dict]) -> dict:
    for key in PER_BATCH:
        result[key] = {b: r[key] for b, r in per_batch.items()}
    one = per_batch.get("1")
    result["overhead_ratio"] = one["overhead_ratio"] if one else None
    result["overhead_ratio_spread"] = one["overhead_ratio_spread"] if one else None
    result["nocache_slowdown"] = {b: round(r["decode_nocache_ms"] / r["decode_ms"], 3)
                                  for b, r in per_batch.items()}
    hf = {b: r["hf_generate_ms"] for b, r in per_batch.items() if "hf_generate_ms" in r}
    result["hf_generate_ms"] = hf.get("1")
    result["hf_generate_ms_by_batch"] = hf or None
    result["hf_tokens_match_ours"] = {b: r["hf_tokens_match_ours"] for b, r in per_batch.items()
                                      if "hf_tokens_match_ours" in r} or None
    result["hf_versions"] = next((r["hf_versions"] for r in per_batch.values()
                                  if "hf_versions" in r), None)
    result["hf_note"] = ("HF T5 generate on our weights from our 220 image+prompt embeddings: "
                         "excludes the ViT, includes the encoder and 8 decoder steps. "
                         "speedup_vs_hf = hf_generate_ms / decode_excl_vit_ms (batch 1); "
                         "speedup_vs_hf_incl_vit = hf_generate_ms / decode_ms.")
    for key in ("speedup_vs_hf", "speedup_vs_hf_incl_vit"):
        result[key] = one.get(key) if one else None
        result[key + "_spread"] = one.get(key + "_spread") if one else None
    ratio, speedup = result["overhead_ratio"], result["speedup_vs_hf"]
    result["targets"] = {
        "overhead_ratio_le_1.25": None if ratio is None else ratio <= 1.25,
        "speedup_vs_hf_ge_3": None if speedup is None else speedup >= 3.0,
    }
    return result


def main(argv):
    del argv
    config = _CONFIG.value
    if vlm.backbone(config.model) != vlm.ENCODER_DECODER:
        raise SystemExit("This benchmark measures the encoder-decoder backbone (it times the "
                         "encoder-decoder alone and against Hugging Face T5); "
                         f"config.model.backbone is {vlm.backbone(config.model)!r}.")
    use_hf = {"on": True, "off": False, "auto": None}[_HF.value]
    if use_hf is None:
        use_hf = hf_available()
    bench = Bench(config)
    device = jax.devices()[0]
    result = {
        "benchmark": "decode_latency", "config": "configs/bench_small.py",
        "device": f"{device.platform}: {device.device_kind}", "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "jax_version": jax.__version__,
        "dtype": config.model.dtype, "dims": describe(config, bench.params),
        "rounds": _ROUNDS.value, "reps": _REPS.value, "warmup": _WARMUP.value,
        "statistic": "median over interleaved rounds of per-round medians; spread = [min, max]",
    }
    per_batch = {}
    for batch in (int(b) for b in _BATCH_SIZES.value):
        r = bench.time_batch(batch, _ROUNDS.value, _REPS.value, _WARMUP.value, use_hf)
        print(json.dumps({"batch": batch, **r}), flush=True)
        per_batch[str(batch)] = r
    output.emit(summarize(result, per_batch), _OUT.value)


if __name__ == "__main__":
    app.run(main)
