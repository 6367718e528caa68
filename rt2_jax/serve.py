"""Serves an exported policy to robots over websockets, wire-compatible with openpi's clients.

  python -m rt2_jax.serve --export=exports/tiny [--host=127.0.0.1] [--port=8000]
      [--max_batch=8] [--batch_wait_ms=5] [--max_image_side=2048] [--max_message_mb=16]
      [--max_instruction_chars=1000] [--temperature=0] [--top_k=0]

A robot connects (openpi-client's `WebsocketClientPolicy(host, port)`, or
`rt2_jax.client.PolicyClient`), receives the policy's metadata, then sends observations
`{"image": uint8 [H, W, 3], "prompt": "pick up the red block"}` (also accepted:
"observation/image", nested `{"observation": {"image": ...}}`, "instruction") and gets back
`{"actions": float32 [1, 8], "action": float32 [8], "bins": int32 [8], "terminate": bool,
"server_timing": {...}}` — the action in the export's units, as `Policy.act` returns it (the
image is resized as training did). The wire format and the error replies are in `rt2_jax.wire`.

Requests from several robots that arrive within `--batch_wait_ms` of each other are decoded
together, up to `--max_batch` (`--max_batch=1` turns batching off); every batch size the server
can form is compiled before the port opens, so no robot waits on a compile. Each request is
validated before it reaches the model; a bad one gets a text reply naming the problem and its
connection stays usable. GET /healthz answers 200 while serving (503 while draining). SIGTERM or
Ctrl-C stops accepting connections, lets requests in flight finish, then exits 0.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import signal
import threading
import time
from http import HTTPStatus

import numpy as np
from absl import app, flags

from rt2_jax import actions as actions_lib
from rt2_jax import wire

PROTOCOL = "openpi-websocket-msgpack"


@dataclasses.dataclass
class _Item:
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray]   # pixels, tokens, mask, batch dim 1
    future: concurrent.futures.Future
    queued: float


class Batcher:
    """Collects requests into batches for one model call on a worker thread.

    A batch starts with the first waiting request and takes every request that arrives within
    `max_wait_s` of it, up to `max_batch`; it stops waiting early once it holds as many requests
    as `senders()` says there are clients (one robot never waits). A batch runs at a
    power-of-two size (the model's compiled sizes); requests beyond it lead the next batch.
    `run(list_of_inputs) -> list_of_outputs` runs on the worker thread only (the model is never
    called concurrently)."""

    _STOP = object()

    def __init__(self, run, max_batch: int, max_wait_s: float, senders=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}.")
        if max_wait_s < 0:
            raise ValueError(f"batch wait must be >= 0, got {max_wait_s}.")
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self._senders = senders
        self._queue: queue.Queue = queue.Queue()
        self._carry: list[_Item] = []         # collected but not yet run (worker thread only)
        self.batch_sizes: list[int] = []      # every batch run so far (for stats and tests)
        self._thread = threading.Thread(target=self._loop, name="rt2-batcher", daemon=True)
        self._thread.start()

    def submit(self, inputs) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self._queue.put(_Item(inputs, future, time.perf_counter()))
        return future

    def close(self) -> None:
        """Finishes what is queued, then stops the worker."""
        self._queue.put(self._STOP)
        self._thread.join()

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self._carry:
                batch.append(self._carry.pop(0))
                continue
            if self._senders is not None and len(batch) >= self._senders():
                break
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is self._STOP:
                stop = True
                break
            batch.append(item)
        # The model runs on power-of-two batches (Policy pads up to one): run the largest
        # power of two now and carry the rest to the next batch instead of computing padding.
        full = 1 << (len(batch).bit_length() - 1)
        self._carry[:0] = batch[full:]
        return batch[:full], stop

    def _loop(self) -> None:
        stop = False
        while not stop or self._carry:
            first = self._carry.pop(0) if self._carry else self._queue.get()
            if first is self._STOP:
                break
            batch, stopped = self._collect(first)
            stop = stop or stopped
            # A request whose client gave up (future cancelled) is dropped here.
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            start = time.perf_counter()
            try:
                outputs = self._run([item.inputs for item in batch])
            except Exception as err:
                logging.exception("Model call failed for a batch of %d.", len(batch))
                for item in batch:
                    item.future.set_exception(err)
                continue
            infer_ms = (time.perf_counter() - start) * 1e3
            for item, out in zip(batch, outputs, strict=True):
                out["server_timing"] = {"infer_ms": infer_ms, "batch_size": len(batch),
                                        "queue_ms": (start - item.queued) * 1e3}
                item.future.set_result(out)


MAX_ERROR_CHARS = 2000


def _clip(text: str) -> str:
    """An error reply no longer than MAX_ERROR_CHARS (a message may quote what it refuses)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


class PolicyServer:
    """A `rt2_jax.policy.Policy` behind a websocket server (see the module docstring).

        server = PolicyServer(policy, port=0).start()   # warms up, then listens
        ... server.port ...
        server.stop()                                    # drains
    """

    def __init__(self, policy, *, host: str = "127.0.0.1", port: int = 8000,
                 max_batch: int = 8, batch_wait_ms: float = 5.0,
                 limits: wire.Limits | None = None, request_timeout_s: float = 120.0):
        if getattr(policy, "wrist_camera", ""):
            raise ValueError(
                f"This export was trained with a wrist camera (config.model.wrist_camera="
                f"{policy.wrist_camera!r}); the server's wire format carries one image per "
                "observation, so it cannot serve it yet. Run it in-process with "
                "rt2_jax.policy.Policy.act(image, instruction, wrist_image=...).")
        self.policy, self.host, self.port = policy, host, port
        self.limits = limits or wire.Limits()
        self.request_timeout_s = request_timeout_s
        self._open = 0     # open connections: a batch never waits for more requests than this
        self.batcher = Batcher(self._run_batch, max_batch, batch_wait_ms / 1e3,
                               senders=lambda: self._open)
        self._server = None
        self._thread = None
        self._draining = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self.stats = {"connections": 0, "requests": 0, "errors": 0}
        self._metadata = wire.pack(self.metadata())

    # --- what a client learns on connect ---

    def metadata(self) -> dict:
        policy = self.policy
        low, high = policy.action_tokenizer.bounds.limits()
        return {
            "server": "rt2_jax", "protocol": PROTOCOL,
            "export_step": policy.step, "dataset": policy.dataset,
            "image_size": policy.image_size, "image_aspect": policy.image_aspect,
            "observation_keys": {"image": list(wire.IMAGE_KEYS),
                                 "instruction": list(wire.INSTRUCTION_KEYS)},
            "action_names": list(actions_lib.ACTION_DIMS),
            "action_low": np.concatenate([[0.0], low]).astype(np.float32),
            "action_high": np.concatenate([[1.0], high]).astype(np.float32),
            "action_units": ("terminate: 1 = end the episode, 0 = continue; other dims in the "
                             "units of the training data's actions, clipped to "
                             "[action_low, action_high]"),
            "action_mapping": policy.action_tokenizer.mapping,
            "sampling": {"temperature": policy.sampling.temperature,
                         "top_k": policy.sampling.top_k,
                         "terminate_threshold": policy.sampling.terminate_threshold},
            "max_batch": self.batcher.max_batch,
            "limits": dataclasses.asdict(self.limits),
        }

    # --- model side (the batcher's worker thread) ---

    def _run_batch(self, inputs: list) -> list[dict]:
        pixels, tokens, mask = (np.concatenate(parts) for parts in zip(*inputs, strict=True))
        out = self.policy.decode(pixels, tokens, mask)
        return [{"actions": out["action"][i][None], "action": out["action"][i],
                 "bins": out["bins"][i], "terminate": bool(out["action"][i][0] >= 0.5)}
                for i in range(len(inputs))]

    def warmup(self) -> None:
        """Compiles the decode loop for every batch size the batcher forms (the powers of two
        up to max_batch)."""
        image = np.zeros((self.policy.image_size, self.policy.image_size, 3), np.uint8)
        one = self.policy.prepare(image, "warm up")
        size = 1
        while size <= self.batcher.max_batch:
            self.policy.decode(*(np.repeat(x, size, axis=0) for x in one))
            size *= 2

    # --- connection side (one thread per connection) ---

    def _health(self, connection, request):
        if request.path in ("/healthz", "/health"):
            if self._draining.is_set():
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(HTTPStatus.OK, "OK\n")
        return None   # anything else goes on to the websocket handshake

    def _answer(self, message) -> bytes | str:
        """One request -> a binary reply, or a text reply naming the problem."""
        try:
            obs = wire.unpack(message, self.limits)
            image, instruction = wire.parse_observation(obs, self.limits)
            inputs = self.policy.prepare(image, instruction)
        except (wire.RequestError, ValueError, TypeError) as err:
            return _clip(f"bad request: {err}")
        future = self.batcher.submit(inputs)
        try:
            return wire.pack(future.result(timeout=self.request_timeout_s))
        except concurrent.futures.TimeoutError:
            future.cancel()
            return f"internal error: the model did not answer within {self.request_timeout_s} s."
        except Exception as err:
            return _clip(f"internal error: {type(err).__name__}: {err}")

    def _handle(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = connection.remote_address
        logging.info("Connection from %s.", peer)
        with self._lock:
            self.stats["connections"] += 1
            self._open += 1
        try:
            connection.send(self._metadata)
            for message in connection:
                with self._lock:
                    self._in_flight += 1
                    self.stats["requests"] += 1
                try:
                    reply = self._answer(message)
                    if isinstance(reply, str):
                        with self._lock:
                            self.stats["errors"] += 1
                        logging.info("Refused a request from %s: %s", peer, reply[:300])
                    connection.send(reply)
                finally:
                    with self._lock:
                        self._in_flight -= 1
        except ConnectionClosed:
            logging.info("Connection from %s closed.", peer)
        finally:
            with self._lock:
                self._open -= 1

    # --- lifecycle ---

    def start(self, warmup: bool = True) -> PolicyServer:
        """Warms up (compiles), then opens the port and serves on a background thread."""
        from websockets.sync.server import serve

        if warmup:
            self.warmup()
        self._server = serve(self._handle, self.host, self.port, compression=None,
                             max_size=self.limits.max_message_bytes,
                             process_request=self._health, server_header="rt2_jax")
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rt2-serve",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_timeout_s: float = 30.0, grace_s: float = 0.5) -> bool:
        """Stops accepting connections, waits (up to `drain_timeout_s`) for requests in flight
        (and `grace_s` for ones already on the wire), closes every connection (code 1001) and
        stops the model thread. True when nothing was cut off."""
        self._draining.set()
        deadline = time.monotonic() + drain_timeout_s
        time.sleep(grace_s)
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        drained = self._in_flight == 0
        if self._server is not None:
            self._server.shutdown(reason="server shutting down")
            self._thread.join()
        self.batcher.close()
        return drained


def _define_flags() -> dict:
    """The command's flags, defined only when run as a program (importing this module for
    PolicyServer registers none)."""
    limits = wire.Limits()
    return {
        "export": flags.DEFINE_string("export", None,
                                      "Export directory (python -m rt2_jax.export)."),
        "host": flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 accepts "
                                    "connections from other machines."),
        "port": flags.DEFINE_integer("port", 8000, "Port (0 picks a free one and prints it)."),
        "max_batch": flags.DEFINE_integer("max_batch", 8,
                                          "Most requests decoded together (1 = off)."),
        "batch_wait_ms": flags.DEFINE_float("batch_wait_ms", 5.0, "How long a batch waits for "
                                            "more requests after its first."),
        "max_image_side": flags.DEFINE_integer("max_image_side", limits.max_image_side,
                                               "Largest image side accepted, in pixels."),
        "max_message_mb": flags.DEFINE_float("max_message_mb", limits.max_message_bytes / 2**20,
                                             "Largest message accepted (larger ones close the "
                                             "connection with code 1009)."),
        "max_instruction_chars": flags.DEFINE_integer(
            "max_instruction_chars", limits.max_instruction_chars,
            "Longest instruction accepted, in characters."),
        "temperature": flags.DEFINE_float("temperature", 0.0, "0 = greedy decoding."),
        "top_k": flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off)."),
        "terminate_threshold": flags.DEFINE_float(
            "terminate_threshold", 0.5, "Say 'done' when p(terminate) at action position 0 is "
            "at least this (0.5 = argmax; lower stops more readily)."),
        "seed": flags.DEFINE_integer("seed", 0, "Sampling seed."),
        "dataset": flags.DEFINE_string("dataset", None, "Robot dataset whose action bounds "
                                       "un-normalize the actions (exports trained on several)."),
    }


_FLAGS: dict = {}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = {name: flag.value for name, flag in _FLAGS.items()}
    if not f["export"]:
        raise app.UsageError("--export is required (a directory written by python -m "
                             "rt2_jax.export or by training with export_at_end).")
    from rt2_jax import decoding
    from rt2_jax import policy as policy_lib

    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("websockets").setLevel(logging.WARNING)   # we log connections ourselves
    limits = wire.Limits(max_message_bytes=int(f["max_message_mb"] * 2**20),
                         max_image_side=f["max_image_side"],
                         max_instruction_chars=f["max_instruction_chars"])
    try:
        sampling = decoding.Sampling(f["temperature"], f["top_k"], f["terminate_threshold"])
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    policy = policy_lib.Policy.from_export(f["export"], dataset=f["dataset"],
                                           sampling=sampling, seed=f["seed"])
    server = PolicyServer(policy, host=f["host"], port=f["port"], max_batch=f["max_batch"],
                          batch_wait_ms=f["batch_wait_ms"], limits=limits)
    print(f"Compiling the decode loop for batches up to {server.batcher.max_batch} ...",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    host = f["host"]
    where = ("localhost only; pass --host=0.0.0.0 to accept other machines"
             if host in ("127.0.0.1", "localhost", "::1") else "reachable from the network")
    print(f"Serving {f['export']} (step {policy.step}) on ws://{host}:{server.port} ({where}); "
          f"health: http://{host}:{server.port}/healthz", flush=True)
    stop.wait()
    print("Stopping: draining requests in flight ...", flush=True)
    drained = server.stop()
    stats = server.stats
    print(f"Stopped ({'drained' if drained else 'drain timed out'}): {stats['connections']} "
          f"connections, {stats['requests']} requests, {stats['errors']} refused.", flush=True)


if __name__ == "__main__":
    _FLAGS.update(_define_flags())
    app.run(main)
