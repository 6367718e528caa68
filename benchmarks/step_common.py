"""The trainer's step on fixed synthetic batches, and timing helpers, shared by the train-step
benchmarks (train_throughput, keypoint_head)."""

import statistics
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from rt2_jax import actions, tokenizer, train_state
from rt2_jax.models import params as params_lib

NUM_SOURCES = 2  # robot, web
INSTRUCTIONS = ("pick up the red block", "push the blue ball left", "open the top drawer",
                "place the apple in the bowl")


def timings_ms(fn: Callable[[], object], reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1e3 * (time.perf_counter() - start))
    return times


def spread(times: list[float]) -> dict:
    """Median and the relative spread of the samples (the machine's noise)."""
    med = statistics.median(times)
    return {"median_ms": round(med, 2), "min_ms": round(min(times), 2),
            "max_ms": round(max(times), 2),
            "rel_range": round((max(times) - min(times)) / med, 3)}


def bench_config(config, batch: int, optimizer: str):
    config = ml_collections.ConfigDict(config.to_dict())
    config.data = ml_collections.ConfigDict({"global_batch_size": batch})
    config.train.optimizer = optimizer
    config.train.grad_accum_steps = 1
    # The synthetic batches carry no pointing targets (and the config keeps no data sources to
    # say which would): a config with the localization loss on (configs/toy_pick.py) is timed
    # without it rather than failing on the missing sources.
    config.train.locate_weight = 0.0
    return config


def synthetic_batches(config, act_tok: actions.ActionTokenizer, tok: tokenizer.Tokenizer,
                      batch: int, count: int) -> list[dict[str, np.ndarray]]:
    """Fixed host batches: even rows robot (8 action ids + EOS), odd rows web (random answer)."""
    rng = np.random.default_rng(0)
    size, le, ld = config.image_size, config.max_prompt_len, config.max_target_len
    vocab = config.model.vocab_size
    out = []
    for _ in range(count):
        is_robot = np.arange(batch) % 2 == 0
        prompts = [tokenizer.robot_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)]) if robot
                   else tokenizer.vqa_prompt("what is left of the red block?")
                   for i, robot in enumerate(is_robot)]
        enc_tokens, enc_mask = tok.encode_batch(prompts, le)
        action = rng.uniform(-1, 1, (batch, 8)).astype(np.float32)
        action[:, 0] = rng.integers(0, 2, batch)
        dec_tokens = np.zeros((batch, ld), np.int32)
        loss_mask = np.zeros((batch, ld), np.float32)
        for i in range(batch):
            if is_robot[i]:
                ids = np.append(act_tok.target_token_ids(action[i]), tok.eos_id)
            else:
                ids = np.append(rng.integers(3, vocab, rng.integers(2, ld)), tok.eos_id)
                action[i] = 0.0
            dec_tokens[i, :len(ids)] = ids
            loss_mask[i, :len(ids)] = 1.0
        out.append({
            "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "encoder_tokens": np.asarray(enc_tokens, np.int32),
            "encoder_mask": np.asarray(enc_mask, bool),
            "decoder_tokens": dec_tokens, "decoder_loss_mask": loss_mask,
            "source": (~is_robot).astype(np.int32), "is_robot": is_robot, "action": action,
        })
    return out


def full_step_fn(config, act_tok, tok, batch: int, num_batches: int):
    """A no-argument callable running the trainer's step on cycling fixed batches."""
    setup = train_state.make_setup(config)
    tables = train_state.ActionTables.build(act_tok, config.model.vocab_size)
    step = train_state.make_train_step(setup, tables, NUM_SOURCES)
    batches = [jax.device_put(b, setup.batch_sharding)
               for b in synthetic_batches(config, act_tok, tok, batch, num_batches)]
    holder = {"state": train_state.init_state(setup, seed=0), "i": 0}
    num_params = params_lib.count(holder["state"].params)

    def run():
        b = batches[holder["i"] % len(batches)]
        holder["i"] += 1
        holder["state"], metrics = step(holder["state"], b)
        return holder["state"], metrics

    return run, num_params, batches
