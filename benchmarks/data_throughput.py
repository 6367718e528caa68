"""Data-pipeline throughput and host memory; prints one JSON object.

  python -m benchmarks.data_throughput [--config=configs/tiny.py] [--minutes=10]
      [--sizes=224,64] [--measure_batches=30]

For each image size: examples/s of the training mixture (after a warm-up batch). Then a streaming
run at the config's image size for `--minutes`, sampling the process's resident memory (RSS)
every few seconds: `rss_growth_pct` compares the sample at minute 1 with the last one (a leak
shows as steady growth; a bounded pipeline levels off once its buffers are full).
"""
import contextlib
import json
import resource
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from data_pipelines import mixture as mixture_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config.")
_MINUTES = flags.DEFINE_float("minutes", 10.0, "Length of the streaming (memory) run.")
_SIZES = flags.DEFINE_list("sizes", ["224"], "Image sizes to time besides the config's.")
_MEASURE_BATCHES = flags.DEFINE_integer("measure_batches", 30, "Batches timed per size.")
_SAMPLE_S = flags.DEFINE_float("sample_every_s", 5.0, "RSS sampling period.")


def rss_mb():
    """Current resident set size in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(config, image_size, num_batches):
    config = config.copy_and_resolve_references()
    config.image_size = image_size
    mix = mixture_lib.build_mixture(config, progress=False)
    next(mix)  # warm-up: file opening, shuffle buffers, first tokenizer call
    start = time.perf_counter()
    for _ in range(num_batches):
        next(mix)
    elapsed = time.perf_counter() - start
    return num_batches * mix.host_batch_size / elapsed


def stream(config, minutes, sample_every_s):
    mix = mixture_lib.build_mixture(config, progress=False)
    samples, examples = [], 0
    start = last_sample = time.perf_counter()
    samples.append({"t_s": 0.0, "rss_mb": round(rss_mb(), 1), "examples": 0})
    while (now := time.perf_counter()) - start < minutes * 60:
        next(mix)
        examples += mix.host_batch_size
        if now - last_sample >= sample_every_s:
            last_sample = now
            samples.append({"t_s": round(now - start, 1), "rss_mb": round(rss_mb(), 1),
                            "examples": examples})
    samples.append({"t_s": round(time.perf_counter() - start, 1), "rss_mb": round(rss_mb(), 1),
                    "examples": examples})
    return samples, mix.counters()


def main(argv):
    del argv
    with contextlib.redirect_stdout(sys.stderr):  # only the JSON goes to stdout
        result = run(_CONFIG.value)
    json.dump(result, sys.stdout)
    print()


def run(config):
    sizes = sorted({int(s) for s in _SIZES.value} | {int(config.image_size)}, reverse=True)
    result = {
        "config_image_size": int(config.image_size),
        "host_batch_size": int(config.data.global_batch_size),
        "examples_per_s": {str(size): round(throughput(config, size, _MEASURE_BATCHES.value), 1)
                           for size in sizes},
    }
    samples, counters = stream(config, _MINUTES.value, _SAMPLE_S.value)
    after_minute = next((s for s in samples if s["t_s"] >= 60.0), samples[0])
    end = samples[-1]
    result.update(
        stream_minutes=_MINUTES.value,
        stream_examples_per_s=round(end["examples"] / max(end["t_s"], 1e-9), 1),
        rss_mb=samples,
        rss_growth_pct=round(100.0 * (end["rss_mb"] / after_minute["rss_mb"] - 1.0), 2),
        rss_growth_from_t_s=after_minute["t_s"],
        counters=counters,
    )
    return result


if __name__ == "__main__":
    app.run(main)
