"""The policy server: openpi-compatible wire format, real openpi and rt2_jax clients in a robot-side
environment, malformed requests, concurrency and batching, disconnects, health, SIGTERM drain."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy import HIGH, LOW, random_params
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve as ws_serve

from configs import tiny
from rt2_jax import actions as actions_lib
from rt2_jax import checkpoints, client, serve, sim, wire
from rt2_jax import policy as policy_lib
from rt2_jax import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROBOT_PYTHON = os.environ.get("RT2_ROBOT_PYTHON",
                              os.path.join(ROOT, ".venv-robot", "bin", "python"))
DRIVE = os.path.join(ROOT, "tests", "robot_client", "drive.py")


# ---------------------------------------------------------------------------------------------
# Wire format (no server)
# ---------------------------------------------------------------------------------------------

_DTYPES = st.sampled_from([np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32,
                           np.float64, np.bool_, np.uint16])


@settings(max_examples=60, deadline=None)
@given(dtype=_DTYPES, shape=st.lists(st.integers(0, 5), max_size=4), seed=st.integers(0, 99),
       text=st.text(max_size=20))
def test_wire_round_trips_arrays_scalars_and_maps(dtype, shape, seed, text):
    rng = np.random.default_rng(seed)
    array = np.asarray(rng.random(shape) * 100).astype(dtype)
    message = {"a": array, "nested": {"s": np.dtype(dtype).type(1), "t": text, "l": [1, 2.5]}}
    out = wire.unpack(wire.pack(message))
    assert out["a"].dtype == array.dtype and out["a"].shape == array.shape
    np.testing.assert_array_equal(out["a"], array)
    assert out["nested"]["s"] == 1
    if dtype is not np.float64:   # a float64 scalar is a Python float: msgpack sends it as one
        assert out["nested"]["s"].dtype == np.dtype(dtype)
    assert out["nested"]["t"] == text and out["nested"]["l"] == [1, 2.5]


def test_wire_speaks_openpi_clients_array_layout():
    """The exact map openpi_client.msgpack_numpy writes (bytes keys) decodes, and ours is it."""
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    theirs = msgpack.packb({"image": {b"__ndarray__": True, b"data": image.tobytes(),
                                      b"dtype": image.dtype.str, b"shape": image.shape}})
    np.testing.assert_array_equal(wire.unpack(theirs)["image"], image)
    ours = msgpack.unpackb(wire.pack({"image": image}))["image"]
    assert ours == {b"__ndarray__": True, b"data": image.tobytes(), b"dtype": "|u1",
                    b"shape": [2, 4, 3]}


_GOOD = wire.pack({"image": np.zeros((16, 16, 3), np.uint8), "prompt": "pick up the red block"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(0, len(_GOOD) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda cut: _GOOD[:cut[0]] + cut[1] + _GOOD[cut[0] + len(cut[1]):]),
    st.integers(0, len(_GOOD) - 1).map(lambda n: _GOOD[:n])))
def test_untrusted_bytes_give_a_request_error_or_a_valid_observation(data):
    """Random and corrupted messages: either a RequestError naming the problem or a checked
    (uint8 [H, W, 3], str) observation; never another exception."""
    try:
        image, instruction = wire.parse_observation(wire.unpack(data))
    except wire.RequestError as err:
        assert str(err)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert isinstance(instruction, str) and instruction.strip()


def test_observation_key_forms():
    image = np.zeros((20, 30, 3), np.uint8)
    for obs in ({"image": image, "prompt": "go"}, {"observation/image": image, "instruction": "go"},
                {"observation": {"image": image}, "prompt": "go"}):
        got, text = wire.parse_observation(wire.unpack(wire.pack(obs)))
        assert got.shape == (20, 30, 3) and text == "go"
    with pytest.raises(wire.RequestError, match="twice"):
        wire.parse_observation({"image": image, "observation/image": image, "prompt": "go"})
    with pytest.raises(wire.RequestError, match="observation/state"):
        wire.parse_observation({"image": image, "prompt": "go", "observation/state": image})


# ---------------------------------------------------------------------------------------------
# A served random-weight export
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    config = tiny.get_config()
    out = str(tmp_path_factory.mktemp("serve") / "export")
    checkpoints.export(out, random_params(config, seed=3), config,
                       tokenizer_lib.default_model_path(), None,
                       actions_lib.ActionBounds(tuple(LOW), tuple(HIGH)), step=7)
    return out


@pytest.fixture(scope="module")
def policy(export_dir):
    return policy_lib.Policy.from_export(export_dir)


@pytest.fixture(scope="module")
def server(policy):
    srv = serve.PolicyServer(policy, port=0, max_batch=16, batch_wait_ms=50.0).start()
    yield srv
    srv.stop(grace_s=0.0)


def observations(n):
    """n distinct observations: toy-world frames at several sizes, different tasks."""
    out = []
    for seed in range(n):
        env = sim.TabletopEnv()
        obs = env.reset(seed=seed)[0]
        image = obs["image"]
        if seed % 3 == 1:   # a camera of another size and aspect: the server resizes it
            image = np.repeat(image, 2, axis=1)
        out.append((np.ascontiguousarray(image), obs["instruction"]))
    return out


@pytest.fixture(scope="module")
def expected(policy):
    """policy.act one observation at a time (what every served answer must equal)."""
    obs = observations(16)
    return obs, [policy.act(image, text) for image, text in obs]


def robot_env_or_skip():
    if not os.path.exists(ROBOT_PYTHON):
        pytest.skip(f"no robot-side environment at {ROBOT_PYTHON} (`make test` creates it with "
                    "tests/robot_client/requirements.txt; it needs the package index)")


def drive(kind, port, obs, tmp_path):
    path = tmp_path / f"{kind}.npz"
    np.savez(path, **{f"image_{i}": im for i, (im, _) in enumerate(obs)},
             **{f"prompt_{i}": np.array(text) for i, (_, text) in enumerate(obs)})
    env = dict(os.environ, PYTHONPATH=ROOT)   # rt2_jax.client from this checkout, no install
    done = subprocess.run([ROBOT_PYTHON, DRIVE, kind, "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["openpi", "rt2_jax"])
def test_robot_side_clients_get_policy_act_actions(kind, server, expected, tmp_path):
    """openpi-client 0.1.2's WebsocketClientPolicy and rt2_jax.client.PolicyClient, each run in
    the robot environment (numpy 1.26, no JAX), get exactly policy.act's action."""
    robot_env_or_skip()
    obs, want = expected
    got = drive(kind, server.port, obs[:4], tmp_path)
    assert got["numpy"].startswith("1.")
    assert got["heavy_modules"] == []
    assert got["action_names"] == list(actions_lib.ACTION_DIMS)
    np.testing.assert_array_equal(np.array(got["actions"], np.float32),
                                  np.stack(want[:4] + want[:1]))
    assert got["chunks"] == [[1, 8]] * 5
    assert len(got["errors"]) == 1 and "bad request" in got["errors"][0]


def test_metadata_and_health(server, policy):
    with connect(f"ws://127.0.0.1:{server.port}") as ws:
        meta = wire.unpack(ws.recv(timeout=10))
    assert meta["export_step"] == 7 and meta["image_size"] == policy.image_size
    assert meta["action_names"] == list(actions_lib.ACTION_DIMS)
    np.testing.assert_allclose(meta["action_low"][1:], LOW, rtol=1e-6)
    np.testing.assert_allclose(meta["action_high"][1:], HIGH, rtol=1e-6)
    assert meta["sampling"] == {"temperature": 0.0, "top_k": 0, "terminate_threshold": 0.5}
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def _array(shape, dtype="|u1", data=None):
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize if data is None else None
    return {b"__ndarray__": True, b"data": data if data is not None else b"\0" * size,
            b"dtype": dtype, b"shape": list(shape)}


def _malformed():
    """(name, raw message) pairs that must each be refused with a text reply."""
    good = np.zeros((32, 32, 3), np.uint8)
    p = wire.pack
    m = msgpack.packb
    return [
        ("float image", p({"image": good.astype(np.float32), "prompt": "go"})),
        ("int64 image", p({"image": good.astype(np.int64), "prompt": "go"})),
        ("rank 2 image", p({"image": good[:, :, 0], "prompt": "go"})),
        ("rank 4 image", p({"image": good[None], "prompt": "go"})),
        ("4 channels", p({"image": np.zeros((32, 32, 4), np.uint8), "prompt": "go"})),
        ("1 channel", p({"image": np.zeros((32, 32, 1), np.uint8), "prompt": "go"})),
        ("1x1 image", p({"image": np.zeros((1, 1, 3), np.uint8), "prompt": "go"})),
        ("20000x20000 image", m({"image": _array((20000, 20000, 3), data=b"\0" * 64),
                                 "prompt": "go"})),
        ("2100x2100 image", p({"image": np.zeros((2100, 2100, 3), np.uint8), "prompt": "go"})),
        ("empty image", p({"image": np.zeros((0, 32, 3), np.uint8), "prompt": "go"})),
        ("missing image", p({"prompt": "go"})),
        ("missing prompt", p({"image": good})),
        ("extra key", p({"image": good, "prompt": "go", "state": np.zeros(7, np.float32)})),
        ("two images", p({"image": good, "observation/image": good, "prompt": "go"})),
        ("image as list", m({"image": good.tolist(), "prompt": "go"})),
        ("image as string", m({"image": "pixels", "prompt": "go"})),
        ("prompt as int", p({"image": good, "prompt": 3})),
        ("prompt as array", p({"image": good, "prompt": np.zeros(3, np.uint8)})),
        ("prompt as bytes", p({"image": good, "prompt": b"go"})),
        ("empty prompt", p({"image": good, "prompt": "   "})),
        ("10 MB prompt", p({"image": good, "prompt": "a" * 10_000_000})),
        ("not a map", p([good, "go"])),
        ("int keys", m({1: "go"})),
        ("non-msgpack bytes", b"\xc1\xc1\xc1 not msgpack"),
        ("truncated message", p({"image": good, "prompt": "go"})[:-100]),
        ("two messages in one", p({"prompt": "go"}) + p({"prompt": "go"})),
        ("array bomb", b"\x81\xa5image\xdd\xff\xff\xff\xff"),
        ("map bomb", b"\xdf\xff\xff\xff\xff"),
        ("nesting bomb", b"\x91" * 100_000 + b"\xc0"),
        ("object dtype", m({"image": _array((2,), "|O", b"\0" * 16), "prompt": "go"})),
        ("short array data", m({"image": _array((32, 32, 3), data=b"\0" * 10), "prompt": "go"})),
        ("bad dtype string", m({"image": _array((1,), "not-a-dtype", b"\0"), "prompt": "go"})),
        ("bad shape", m({"image": _array((1,), data=b"\0") | {b"shape": "32x32"},
                         "prompt": "go"})),
        ("ext type", m({"image": msgpack.ExtType(7, b"x"), "prompt": "go"})),
        ("text frame", "{'image': 1}"),
        ("deep observation", p({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}})),
        ("megabyte key", p({"image": good, "prompt": "go", "k" * 1_000_000: 1})),
    ]


def test_malformed_requests_each_get_an_error_and_the_server_keeps_serving(server, expected):
    obs, want = expected
    good = wire.pack({"image": obs[0][0], "prompt": obs[0][1]})
    cases = _malformed()
    assert len(cases) >= 25
    refused_before = server.stats["errors"]
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        ws.recv(timeout=10)   # metadata
        for name, message in cases:
            ws.send(message)
            reply = ws.recv(timeout=60)
            assert isinstance(reply, str) and reply.startswith("bad request: "), (name, reply)
            assert len(reply) <= serve.MAX_ERROR_CHARS, name
            ws.send(good)     # the same connection still serves
            answer = wire.unpack(ws.recv(timeout=60))
            np.testing.assert_array_equal(answer["action"], want[0], err_msg=name)
    assert server.stats["errors"] - refused_before == len(cases)


def test_an_oversized_message_closes_only_its_connection(server, expected):
    """Over the message limit (16 MiB): the websocket layer closes that connection with 1009;
    our client raises ServerError saying so; other connections are untouched."""
    obs, want = expected
    with client.PolicyClient("127.0.0.1", server.port) as bystander:
        with client.PolicyClient("127.0.0.1", server.port) as c:
            with pytest.raises(client.ServerError, match="too large"):
                c.act(np.zeros((2400, 2400, 3), np.uint8), "go")   # 17.3 MB
            np.testing.assert_array_equal(c.act(*obs[1]), want[1])   # reconnects
        np.testing.assert_array_equal(bystander.act(*obs[2]), want[2])


def test_a_client_vanishing_mid_request_does_not_disturb_others(server, expected):
    obs, want = expected
    for _ in range(3):
        ws = connect(f"ws://127.0.0.1:{server.port}")
        ws.recv(timeout=10)
        ws.send(wire.pack({"image": obs[3][0], "prompt": obs[3][1]}))
        ws.socket.close()   # gone without a closing handshake
    with client.PolicyClient("127.0.0.1", server.port) as c:
        for i in range(4):
            np.testing.assert_array_equal(c.act(*obs[i]), want[i])


def _concurrently(port, obs, rounds=2):
    barrier = threading.Barrier(len(obs))

    def one(i):
        with client.PolicyClient("127.0.0.1", port) as c:
            barrier.wait()
            return [c.act(*obs[i]) for _ in range(rounds)]

    with concurrent.futures.ThreadPoolExecutor(len(obs)) as pool:
        return list(pool.map(one, range(len(obs))))


def test_16_concurrent_clients_batched_get_one_by_one_answers(server, expected):
    obs, want = expected
    before = len(server.batcher.batch_sizes)
    results = _concurrently(server.port, obs)
    for i, answers in enumerate(results):
        for got in answers:
            np.testing.assert_array_equal(got, want[i], err_msg=f"client {i}")
    assert max(server.batcher.batch_sizes[before:]) > 1   # requests were decoded together


def test_batching_off_gives_the_same_answers(policy, expected):
    obs, want = expected
    srv = serve.PolicyServer(policy, port=0, max_batch=1).start()
    try:
        results = _concurrently(srv.port, obs[:8], rounds=1)
    finally:
        srv.stop(grace_s=0.0)
    assert set(srv.batcher.batch_sizes) == {1}
    for i, (got,) in enumerate(results):
        np.testing.assert_array_equal(got, want[i])


def test_client_times_out_and_reconnects():
    """A server that never answers: TimeoutError after `timeout`; a server restarted on the
    same port: the next act reconnects and is answered."""
    meta = wire.pack({"action_names": list(actions_lib.ACTION_DIMS)})
    reply = wire.pack({"action": np.arange(8, dtype=np.float32), "actions": np.zeros((1, 8))})

    def silent(ws):
        ws.send(meta)
        for _ in ws:
            pass

    def answering(ws):
        ws.send(meta)
        for _ in ws:
            ws.send(reply)

    with ws_serve(silent, "127.0.0.1", 0) as srv:
        port = srv.socket.getsockname()[1]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        c = client.PolicyClient("127.0.0.1", port, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer"):
            c.act(np.zeros((16, 16, 3), np.uint8), "go")
        assert time.monotonic() - start < 5
        srv.shutdown()
    with ws_serve(answering, "127.0.0.1", port) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        np.testing.assert_array_equal(c.act(np.zeros((16, 16, 3), np.uint8), "go"),
                                      np.arange(8))
        srv.shutdown()
    c.close()
    with pytest.raises(ConnectionError, match="no policy server"):
        client.PolicyClient("127.0.0.1", port, connect_timeout=0.3)


def test_serve_command_rejects_a_bad_terminate_threshold(export_dir):
    """A threshold outside (0, 1) is a usage error that names the flag, before any loading."""
    proc = subprocess.run([sys.executable, "-m", "rt2_jax.serve", f"--export={export_dir}",
                           "--port=0", "--terminate_threshold=1.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "terminate_threshold must be strictly between 0 and 1" in proc.stderr + proc.stdout


def test_serve_command_drains_on_sigterm(export_dir, expected):
    """`python -m rt2_jax.serve`: says where it listens, answers, and on SIGTERM finishes the
    request in flight, then exits 0."""
    obs, want = expected
    proc = subprocess.Popen([sys.executable, "-m", "rt2_jax.serve", f"--export={export_dir}",
                             "--port=0", "--max_batch=2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        port, lines = None, []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Serving "):
                assert "localhost only" in line
                port = int(line.split("ws://127.0.0.1:")[1].split()[0])
                break
        assert port, "".join(lines)
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.recv(timeout=10)
            message = wire.pack({"image": obs[0][0], "prompt": obs[0][1]})
            ws.send(message)
            np.testing.assert_array_equal(wire.unpack(ws.recv(timeout=60))["action"], want[0])
            ws.send(message)
            proc.send_signal(signal.SIGTERM)
            np.testing.assert_array_equal(wire.unpack(ws.recv(timeout=60))["action"], want[0])
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=60)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "Stopped (drained): 1 connections, 2 requests, 0 refused." in out


def test_batcher_runs_power_of_two_batches_and_carries_the_rest():
    """11 requests queued at once with max_batch 16: batches of 8, 2, 1 (no padded rows), every
    request answered with its own output, in order."""
    release = threading.Event()
    seen = []

    def run(inputs):
        release.wait(10)
        seen.append(len(inputs))
        return [{"x": x} for x in inputs]

    batcher = serve.Batcher(run, max_batch=16, max_wait_s=0.2)
    blocker = batcher.submit(-1)           # occupies the worker while the rest queue up
    time.sleep(0.3)
    futures = [batcher.submit(i) for i in range(11)]
    release.set()
    assert blocker.result(10)["x"] == -1
    assert [f.result(10)["x"] for f in futures] == list(range(11))
    batcher.close()
    assert seen == [1, 8, 2, 1]
