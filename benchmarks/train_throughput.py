"""Train-step throughput and MFU of the small PaLI-style config (and transformers' T5); prints JSON.

  python -m benchmarks.train_throughput [--config=configs/bench_small.py] [--batch=8] [--reps=5]
      [--warmup=1] [--matmul_size=2048] [--optimizer=adamw] [--out=FILE] [--torch=auto|on|off]

Medians over `--reps` timed calls after `--warmup` untimed ones (the first compiles), each
ended with `block_until_ready` on the new state and the metrics:
  step_ms           `rt2_jax.train_state.make_train_step` (jitted, state donated) on fixed synthetic
                    batches of the host-batch contract (half robot rows: 8 action ids + EOS; half
                    web rows: random answers), cycling through `--num_batches` of them;
  encdec_step_ms    the same update for the encoder-decoder alone (no ViT): inputs are fixed
                    [B, image tokens + prompt, d_model] embeddings, loss = the trainer's
                    token cross-entropy, same optimizer, jitted and donated;
  matmul            a jitted f32 `--matmul_size`-square matmul, timed before and after the model
                    (one median over both halves): this machine's dense-matmul FLOP/s.
model_flops_per_step follows MaxText (rt2_jax.tools.flops: 6 x parameter-matmul FLOPs per token
plus attention scores/context with the actual lengths); mfu = achieved / matmul FLOP/s.

With torch and transformers installed (the `parity` extra) it also times a transformers
`T5ForConditionalGeneration` train step with the same encoder-decoder dims: `inputs_embeds` of
the encoder length standing in for image + prompt, `labels` of the target length, global-norm
clipping and AdamW with the same hyper-parameters, torch threads = CPU cores. It has no ViT, so
`speedup_vs_torch_encdec` (vs encdec_step_ms) is the like-for-like ratio and `speedup_vs_torch`
(vs the full step_ms, ViT included) is a lower bound. Nothing is downloaded.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import platform
import statistics

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from benchmarks import output
from benchmarks.step_common import bench_config, full_step_fn, spread, timings_ms
from rt2_jax import actions, optim, tokenizer, train_state
from rt2_jax.models import encoder_decoder, vlm
from rt2_jax.models import params as params_lib
from rt2_jax.tools import flops

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_small.py", "Model config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size (one CPU device: the host batch).")
_REPS = flags.DEFINE_integer("reps", 5, "Timed repetitions per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls before timing (the first compiles).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2, "Distinct synthetic batches to cycle.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the reference f32 matmul.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adamw", ["adamw", "adafactor"],
                               "config.train.optimizer for our steps (torch always uses AdamW).")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")
_TORCH = flags.DEFINE_enum("torch", "auto", ["auto", "on", "off"],
                           "Time transformers' T5 train step: auto = when torch/transformers "
                           "import.")

def encdec_step_fn(config, batches: list[dict], batch: int):
    """The same update for the encoder-decoder alone, from fixed image+prompt embeddings."""
    model = encoder_decoder.from_config(config.model)
    d_model = config.model.encdec.d_model
    image_tokens = (config.image_size // config.model.vit.patch_size) ** 2
    enc_len = image_tokens + config.max_prompt_len
    rng = np.random.default_rng(1)
    inputs = []
    for b in batches:
        mask = np.concatenate([np.ones((batch, image_tokens), bool),
                               np.asarray(b["encoder_mask"])], axis=1)
        embeds = rng.normal(size=(batch, enc_len, d_model)).astype(np.float32)
        inputs.append(tuple(jnp.asarray(x) for x in (
            embeds, mask, b["decoder_tokens"], b["decoder_loss_mask"])))
    z_loss = float(config.train.z_loss)

    def logits_fn(module, embeds, mask, dec_in):
        return module.decode(module.encode(embeds, mask, True), mask, dec_in, True)

    def loss_fn(params, embeds, mask, targets, loss_mask):
        dec_in = encoder_decoder.shift_right(targets, 0)
        logits = model.apply({"params": params}, embeds, mask, dec_in, method=logits_fn)
        token_loss = train_state.cross_entropy(logits, targets, loss_mask, z_loss)
        return token_loss.sum() / jnp.maximum(loss_mask.sum(), 1.0)

    e, m, d, _ = inputs[0]
    params = params_lib.unbox(
        jax.jit(lambda key: model.init(key, e[:1], m[:1], d[:1], method=logits_fn))(
            jax.random.PRNGKey(0)))
    params = params["params"]
    tx = optim.make_optimizer(config.train, params)

    @flax.struct.dataclass
    class State:
        params: object
        opt_state: object

    def step(state, embeds, mask, targets, loss_mask):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, embeds, mask, targets, loss_mask)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return State(optax.apply_updates(state.params, updates), opt_state), loss

    step = jax.jit(step, donate_argnums=(0,))
    holder = {"state": State(params, tx.init(params)), "i": 0}

    def run():
        args = inputs[holder["i"] % len(inputs)]
        holder["i"] += 1
        holder["state"], loss = step(holder["state"], *args)
        return holder["state"], loss

    return run, inputs


def matmul_fn(n: int):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    return lambda: f(a, b)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def torch_step_fn(config, inputs: list[tuple]):
    """transformers T5 train step (AdamW + clipping) on the same shapes; and its versions."""
    import torch
    import transformers

    from rt2_jax.tools import hf_t5

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = hf_t5.build_model(config.model.encdec, config.model.vocab_size).train()
    t = config.train
    opt = torch.optim.AdamW(model.parameters(), lr=float(t.learning_rate),
                            betas=(float(t.b1), float(t.b2)), eps=1e-8,
                            weight_decay=float(t.weight_decay))
    clip = float(t.grad_clip_norm)
    batches = []
    for embeds, mask, targets, loss_mask in inputs:
        labels = np.where(np.asarray(loss_mask) > 0, np.asarray(targets), -100)
        batches.append((torch.from_numpy(np.array(embeds)),
                        torch.from_numpy(np.asarray(mask, np.int64)),
                        torch.from_numpy(labels.astype(np.int64))))
    counter = {"i": 0}

    def run():
        embeds, mask, labels = batches[counter["i"] % len(batches)]
        counter["i"] += 1
        loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "torch_threads": torch.get_num_threads()}
    return run, versions


def describe(config, batch: int, num_params: int) -> dict:
    m = config.model
    return {
        "image_size": config.image_size, "patch_size": m.vit.patch_size,
        "vit": {k: m.vit[k] for k in ("width", "depth", "num_heads", "mlp_dim")},
        "encdec": {k: m.encdec[k] for k in (
            "d_model", "num_encoder_layers", "num_decoder_layers", "num_heads", "head_dim",
            "d_ff", "mlp_activation")},
        "vocab_size": m.vocab_size,
        "image_tokens": (config.image_size // m.vit.patch_size) ** 2,
        "prompt_tokens": config.max_prompt_len, "target_tokens": config.max_target_len,
        "scan_layers": m.scan_layers, "remat_policy": m.remat_policy, "dtype": m.dtype,
        "optimizer": config.train.optimizer, "batch": batch, "num_params": num_params,
    }


def versions() -> dict:
    import flax as flax_pkg
    import jaxlib
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax_pkg.__version__,
            "optax": optax.__version__, "numpy": np.__version__}


def main(argv):
    del argv
    batch, reps, warmup = _BATCH.value, _REPS.value, _WARMUP.value
    config = bench_config(_CONFIG.value, batch, _OPTIMIZER.value)
    if vlm.backbone(config.model) != vlm.ENCODER_DECODER:
        raise SystemExit("This benchmark measures the encoder-decoder backbone (it times the "
                         "encoder-decoder alone and against Hugging Face T5); "
                         f"config.model.backbone is {vlm.backbone(config.model)!r}.")
    use_torch = {"on": True, "off": False, "auto": None}[_TORCH.value]
    if use_torch is None:
        use_torch = torch_available()
    tok = tokenizer.Tokenizer()
    bounds = actions.ActionBounds.from_stats(None, "fixed", [-1.0] * 7, [1.0] * 7)
    act_tok = actions.ActionTokenizer(bounds, tok, config.actions.mapping)

    n = _MATMUL_SIZE.value
    matmul = matmul_fn(n)
    matmul_times = timings_ms(matmul, reps, warmup)
    full, num_params, batches = full_step_fn(config, act_tok, tok, batch, _NUM_BATCHES.value)
    step_times = timings_ms(full, reps, warmup)
    encdec, inputs = encdec_step_fn(config, batches, batch)
    encdec_times = timings_ms(encdec, reps, warmup)
    torch_times, torch_versions = None, None
    if use_torch:
        torch_step, torch_versions = torch_step_fn(config, inputs)
        torch_times = timings_ms(torch_step, reps, warmup)
    matmul_times += timings_ms(matmul, reps, 0)

    matmul_rate = 2 * n**3 / (statistics.median(matmul_times) / 1e3)
    step_ms = statistics.median(step_times)
    encdec_ms = statistics.median(encdec_times)
    model_flops = flops.train_flops(config, batch)
    encdec_flops = flops.train_flops(config, batch, include_vit=False)
    achieved = model_flops["total"] / (step_ms / 1e3)
    encdec_achieved = encdec_flops["total"] / (encdec_ms / 1e3)
    torch_ms = statistics.median(torch_times) if torch_times else None
    device = jax.devices()[0]
    result = {
        "benchmark": "train_throughput", "config": "configs/bench_small.py",
        "device": f"{device.platform}: {device.device_kind}", "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "processor": platform.processor() or None,
        "versions": {**versions(), **(torch_versions or {})},
        "dims": describe(config, batch, num_params), "batch": batch,
        "reps": reps, "warmup": warmup, "statistic": "median",
        "step_ms": round(step_ms, 2),
        "model_flops_per_step": model_flops["total"],
        "model_flops_breakdown": model_flops,
        "achieved_flops_per_s": round(achieved),
        "matmul_size": n,
        "matmul_flops_per_s": round(matmul_rate),
        "mfu": round(achieved / matmul_rate, 3),
        "examples_per_s": round(batch / (step_ms / 1e3), 2),
        "encdec_step_ms": round(encdec_ms, 2),
        "encdec_model_flops_per_step": encdec_flops["total"],
        "encdec_achieved_flops_per_s": round(encdec_achieved),
        "encdec_mfu": round(encdec_achieved / matmul_rate, 3),
        "torch_step_ms": None if torch_ms is None else round(torch_ms, 2),
        "speedup_vs_torch": None if torch_ms is None else round(torch_ms / step_ms, 2),
        "speedup_vs_torch_encdec": None if torch_ms is None else round(torch_ms / encdec_ms, 2),
        "torch_mfu": None if torch_ms is None else round(
            encdec_flops["total"] / (torch_ms / 1e3) / matmul_rate, 3),
        "torch_note": ("transformers T5ForConditionalGeneration train step (AdamW + global-norm "
                       "clipping) from inputs_embeds of the encoder length: it EXCLUDES the "
                       "ViT. speedup_vs_torch = torch_step_ms / step_ms (ours with the ViT, a "
                       "lower bound); speedup_vs_torch_encdec = torch_step_ms / encdec_step_ms "
                       "(like for like)."),
        "noise": {"step": spread(step_times), "encdec_step": spread(encdec_times),
                  "matmul": spread(matmul_times),
                  "torch_step": spread(torch_times) if torch_times else None},
    }
    result["targets"] = {
        "mfu_ge_0.6": result["mfu"] >= 0.6,
        "faster_than_torch": (None if torch_ms is None
                              else result["speedup_vs_torch_encdec"] > 1.0),
    }
    output.emit(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
