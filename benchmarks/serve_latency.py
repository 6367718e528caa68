"""Policy-server latency and throughput: `rt2_jax.serve` vs calling `Policy.act`; prints JSON.

  python -m benchmarks.serve_latency [--configs=tiny,bench_small] [--rounds=5] [--reps=20]
      [--clients=1,4,16] [--requests_per_client=4] [--batch_wait_ms=5] [--out=FILE]

Per config, a random-weight float32 export is written to a temporary directory and served from
this process on localhost twice: batching on (`max_batch=16`) and off (`max_batch=1`). The
observation is a 256x320 RGB camera frame (RT-1's camera size; the server resizes it to the
config's image size, as `Policy.act` does) and a fixed instruction; greedy decoding.

- Latency (one client, batching on — with one open connection a batch never waits): each round
  times `--reps` calls of `policy.act` and `--reps` round trips through `PolicyClient.act`, the
  two in alternating order from round to round. p50 and p95 over every timed call of a
  variant; `overhead_ms` = the per-round difference of medians (served - direct), reported as
  the median over rounds with its [min, max].
- Throughput: N concurrent clients (threads, each its own connection, connected before timing)
  send `--requests_per_client` requests each, back to back; actions/s = all requests / wall
  time. Batching on and off alternate within each round; per N: median actions/s over rounds
  with [min, max], the per-round ratio on/off (median, [min, max]) and the mean batch size the
  batching server formed.

The clients run in the server's process (threads sharing its cores and GIL), which is an upper
bound on what serving costs a robot on another machine; the network is loopback.
"""

import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import output
from rt2_jax import actions, checkpoints, client, serve, tokenizer
from rt2_jax import policy as policy_lib
from rt2_jax.models import params as params_lib
from rt2_jax.models.vlm import VLM

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "bench_small"],
                             "Config modules under configs/ to serve.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_REPS = flags.DEFINE_integer("reps", 20, "Timed calls per latency variant and round.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "4", "16"], "Concurrent clients to time.")
_REQUESTS = flags.DEFINE_integer("requests_per_client", 4,
                                 "Requests each client sends per throughput measurement.")
_BATCH_WAIT_MS = flags.DEFINE_float("batch_wait_ms", 5.0, "The batching server's wait.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")

INSTRUCTION = "pick up the red block"
CAMERA = (256, 320)


def make_export(config, out: str) -> None:
    """Random weights (model.init), the shipped tokenizer, bounds [-1, 1], float32."""
    model = VLM.from_config(config)
    size, length = config.image_size, config.max_prompt_len
    init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, size, size, 3), jnp.uint8),
                                          jnp.zeros((1, length), jnp.int32),
                                          jnp.ones((1, length), bool),
                                          jnp.zeros((1, 1), jnp.int32)))
    params = params_lib.unbox(init(jax.random.PRNGKey(0)))["params"]
    bounds = actions.ActionBounds(tuple([-1.0] * 7), tuple([1.0] * 7))
    checkpoints.export(out, params, config, tokenizer.default_model_path(), None, bounds,
                       dtype="float32", step=0)


def spread(values) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def percentile(values, q) -> float:
    return round(float(np.percentile(values, q)), 3)


def latency(policy, port: int, image, rounds: int, reps: int) -> dict:
    with client.PolicyClient("127.0.0.1", port) as c:
        direct = lambda: policy.act(image, INSTRUCTION)
        served = lambda: c.act(image, INSTRUCTION)
        for _ in range(3):                                     # warm both paths
            np.testing.assert_array_equal(direct(), served())
        times = {"direct": [], "served": []}
        overhead = []
        for r in range(rounds):
            medians = {}
            for name in (("direct", "served") if r % 2 == 0 else ("served", "direct")):
                fn, calls = (direct if name == "direct" else served), []
                for _ in range(reps):
                    start = time.perf_counter()
                    fn()
                    calls.append((time.perf_counter() - start) * 1e3)
                times[name] += calls
                medians[name] = statistics.median(calls)
            overhead.append(medians["served"] - medians["direct"])
    return {**{f"{name}_ms": {"p50": percentile(t, 50), "p95": percentile(t, 95)}
               for name, t in times.items()},
            "overhead_ms": spread(overhead)}


def throughput_once(server, image, clients: int, requests: int) -> tuple[float, list[int]]:
    conns = [client.PolicyClient("127.0.0.1", server.port) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    before = len(server.batcher.batch_sizes)

    def run(c):
        barrier.wait()
        for _ in range(requests):
            c.act(image, INSTRUCTION)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for c in conns:
        c.close()
    return clients * requests / wall, server.batcher.batch_sizes[before:]


def throughput(servers: dict, image, clients_list, rounds: int, requests: int) -> dict:
    for server in servers.values():                            # warm up connections and paths
        throughput_once(server, image, 2, 1)
    out = {}
    for clients in clients_list:
        rates = {"on": [], "off": []}
        ratio, batches = [], []
        for r in range(rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                rate, sizes = throughput_once(servers[mode], image, clients, requests)
                rates[mode].append(rate)
                if mode == "on":
                    batches += sizes
            ratio.append(rates["on"][-1] / rates["off"][-1])
        out[str(clients)] = {"actions_per_s_batching_on": spread(rates["on"]),
                             "actions_per_s_batching_off": spread(rates["off"]),
                             "on_over_off": spread(ratio),
                             "mean_batch_size_on": round(statistics.mean(batches), 2)}
    return out


def bench_config(name: str) -> dict:
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*CAMERA, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = os.path.join(tmp, "export")
        make_export(config, export_dir)
        policy = policy_lib.Policy.from_export(export_dir)
    servers = {"on": serve.PolicyServer(policy, port=0, max_batch=16,
                                        batch_wait_ms=_BATCH_WAIT_MS.value).start(),
               "off": serve.PolicyServer(policy, port=0, max_batch=1).start()}
    try:
        result = {"config": f"configs/{name}.py", "image_size": config.image_size,
                  "latency": latency(policy, servers["on"].port, image, _ROUNDS.value,
                                     _REPS.value),
                  "throughput": throughput(servers, image, [int(c) for c in _CLIENTS.value],
                                           _ROUNDS.value, _REQUESTS.value)}
    finally:
        for server in servers.values():
            server.stop(grace_s=0.0)
    return result


def main(argv):
    del argv
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)   # one line per connection otherwise
    results = {
        "benchmark": "serve_latency",
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "jax_version": jax.__version__, "dtype": "float32",
        "camera_image": [*CAMERA, 3], "rounds": _ROUNDS.value, "reps": _REPS.value,
        "requests_per_client": _REQUESTS.value, "batch_wait_ms": _BATCH_WAIT_MS.value,
        "max_batch_on": 16,
        "statistic": ("latency: p50/p95 over all timed calls; others: median over interleaved "
                      "rounds with [min, max]"),
        "configs": {},
    }
    for name in _CONFIGS.value:
        results["configs"][name] = bench_config(name)
        print(json.dumps({name: results["configs"][name]}), flush=True)
    output.emit(results, _OUT.value)


if __name__ == "__main__":
    app.run(main)
