"""A light client for `python -m rt2_jax.serve`, for the robot computer.

    from rt2_jax.client import PolicyClient

    with PolicyClient("127.0.0.1", 8000) as client:
        print(client.metadata["action_names"])
        action = client.act(image, "pick up the red block")   # float32[8]

It imports numpy, msgpack and websockets only (no JAX, no TensorFlow): install the package
without dependencies, or copy `rt2_jax/__init__.py`, `rt2_jax/wire.py` and this file.

- `act(image, instruction)` -> float32[8] (terminate, dx, dy, dz, droll, dpitch, dyaw,
  gripper); `infer(observation)` -> the server's whole reply (openpi's `infer` interface).
- Each reply is awaited at most `timeout` seconds (`TimeoutError`; the connection is then
  dropped, so a late answer can never be taken for the next request's).
- A connection that drops is reopened, waiting up to `connect_timeout` seconds for the server,
  and the request is sent once more (a request has no side effects on the server).
- A request the server refuses raises `ServerError` with the server's reason.
"""

from __future__ import annotations

import time

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from rt2_jax import wire

# Replies come from the server we chose to talk to; the limit only guards against garbage.
_REPLY_LIMITS = wire.Limits(max_message_bytes=2**24)


class ServerError(RuntimeError):
    """The server refused a request or failed to answer it; the message says why."""


class PolicyClient:
    """One websocket connection to a policy server (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = 8000, *,
                 timeout: float = 30.0, connect_timeout: float = 30.0):
        self.uri = host if host.startswith(("ws://", "wss://")) else f"ws://{host}"
        if port is not None:
            self.uri += f":{port}"
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._ws = None
        self.metadata: dict = {}
        self._connect()

    def _connect(self) -> None:
        """Opens the connection and reads the metadata; retries until `connect_timeout`."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.1
        while True:
            try:
                ws = connect(self.uri, compression=None, max_size=None,
                             open_timeout=max(1.0, self.connect_timeout))
                try:
                    self.metadata = wire.unpack(ws.recv(timeout=self.timeout), _REPLY_LIMITS)
                except BaseException:
                    ws.close()
                    raise
                self._ws = ws
                return
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as err:
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(f"no policy server answered at {self.uri} within "
                                          f"{self.connect_timeout} s ({err}); is "
                                          "`python -m rt2_jax.serve` running there?") from err
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def infer(self, observation: dict) -> dict:
        """Sends one observation, returns the reply: {'actions' [1, 8], 'action' [8], 'bins',
        'terminate', 'server_timing'}."""
        message = wire.pack(observation)
        for attempt in range(2):
            if self._ws is None:
                self._connect()
            try:
                self._ws.send(message)
                reply = self._ws.recv(timeout=self.timeout)
                break
            except TimeoutError:
                self.close()
                raise TimeoutError(f"the policy server at {self.uri} did not answer within "
                                   f"{self.timeout} s.") from None
            except ConnectionClosed as err:
                self.close()
                if err.rcvd is not None and err.rcvd.code == 1009:
                    raise ServerError(f"the server refused the message as too large "
                                      f"({len(message)} bytes; its limit is "
                                      f"{self.metadata.get('limits', {}).get('max_message_bytes')}"
                                      ").") from None
                if attempt:
                    raise ConnectionError(f"the connection to {self.uri} closed twice while "
                                          f"waiting for an answer ({err}).") from err
        if isinstance(reply, str):
            raise ServerError(reply)
        return wire.unpack(reply, _REPLY_LIMITS)

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """uint8 [H, W, 3] camera image + instruction -> float32[8] action."""
        return np.asarray(self.infer({"image": image, "prompt": instruction})["action"])

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
