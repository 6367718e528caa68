"""The policy server's wire format: msgpack with numpy arrays, as openpi's websocket policies use.

A leaf module (numpy and msgpack only): the server (`rt2_jax.serve`) and the light client
(`rt2_jax.client`) share it, and a robot computer needs nothing else to talk to the server.

Messages are msgpack maps. A numpy array travels as openpi-client's `msgpack_numpy` writes it,
a map `{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [...]}`, and a
numpy scalar as `{b"__npgeneric__": True, b"data": <item>, b"dtype": "<f4"}`. So openpi's
`WebsocketClientPolicy` and this package's `PolicyClient` can both talk to the server.

Protocol (one websocket connection per robot):
  1. on connect the server sends one binary message: the policy's metadata (`metadata` below);
  2. the client sends an observation (binary), the server answers it (binary) with the action;
  3. a request the server cannot use gets a *text* message naming the problem (openpi's client
     raises it as `RuntimeError("Error in inference server: ...")`) and the connection stays
     open for the next request.

Decoding untrusted bytes (`unpack`) never unpickles or evaluates anything: only msgpack's own
types and the two numpy forms above (numeric and bool dtypes only, data length checked against
dtype and shape before an array is made) come out, with msgpack's length limits tied to the
message size so a small message cannot claim a huge container.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

# Observation keys the server reads. openpi-style flat keys ("observation/image") and nested maps
# ({"observation": {"image": ...}}) are the same key after flattening with "/".
IMAGE_KEYS = ("image", "observation/image")
INSTRUCTION_KEYS = ("prompt", "instruction")
_ARRAY_KINDS = "biuf"   # bool, signed, unsigned, float: never object, void, complex or strings
_MAX_ARRAY_RANK = 8
_MAX_NESTING = 4        # observation maps nested deeper than this are refused


class RequestError(ValueError):
    """A request the server refuses; the message names the problem and is sent to the client."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a request may contain. Defaults suit camera images up to 2048 px a side."""

    max_message_bytes: int = 16 * 2**20
    max_image_side: int = 2048
    min_image_side: int = 8
    max_instruction_chars: int = 1000

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if int(getattr(self, field.name)) < 1:
                raise ValueError(f"Limits.{field.name} must be >= 1, got "
                                 f"{getattr(self, field.name)}.")
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"Limits.min_image_side ({self.min_image_side}) is larger than "
                             f"max_image_side ({self.max_image_side}).")


# ---------------------------------------------------------------------------------------------
# Encoding (trusted data: ours)
# ---------------------------------------------------------------------------------------------


def _pack_numpy(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype} (numeric or bool only).")
        return {b"__ndarray__": True, b"data": obj.tobytes(order="C"), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"cannot send a numpy scalar of dtype {obj.dtype}.")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}.")


def pack(obj: Any) -> bytes:
    """msgpack bytes of `obj` (dicts, lists, str, numbers, bool, None, numpy arrays/scalars)."""
    return msgpack.packb(obj, default=_pack_numpy, use_bin_type=True)


# ---------------------------------------------------------------------------------------------
# Decoding (untrusted data)
# ---------------------------------------------------------------------------------------------


def _dtype(name) -> np.dtype:
    if not isinstance(name, str | bytes):
        raise RequestError(f"array dtype must be a string like '|u1', got {name!r}.")
    try:
        dtype = np.dtype(name.decode() if isinstance(name, bytes) else name)
    except (TypeError, ValueError, UnicodeDecodeError, SyntaxError) as err:
        raise RequestError(f"array dtype {name!r} is not a numpy dtype ({err}).") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.shape != ():
        raise RequestError(f"array dtype {name!r} is not allowed: send bool, integer or float "
                           "arrays.")
    return dtype


def _unpack_numpy(obj: dict):
    """msgpack object_hook: openpi's numpy maps -> numpy (validated); other maps unchanged."""
    if b"__ndarray__" in obj:
        if set(obj) != {b"__ndarray__", b"data", b"dtype", b"shape"}:
            raise RequestError(f"malformed array: expected keys __ndarray__, data, dtype, shape; "
                               f"got {sorted(repr(k) for k in obj)}.")
        dtype, shape, data = _dtype(obj[b"dtype"]), obj[b"shape"], obj[b"data"]
        if (not isinstance(shape, list | tuple) or len(shape) > _MAX_ARRAY_RANK
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                           for d in shape)):
            raise RequestError(f"malformed array shape {shape!r}: a list of at most "
                               f"{_MAX_ARRAY_RANK} non-negative ints.")
        if not isinstance(data, bytes):
            raise RequestError(f"malformed array: data must be bytes, got "
                               f"{type(data).__name__}.")
        # Checked before any array exists; the shape may name far more than the data holds.
        needed = math.prod(shape) * dtype.itemsize
        if needed != len(data):
            raise RequestError(f"array data holds {len(data)} bytes but dtype {dtype} and shape "
                               f"{list(shape)} need {needed}; the message is truncated or "
                               "malformed.")
        return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))
    if b"__npgeneric__" in obj:
        if set(obj) != {b"__npgeneric__", b"data", b"dtype"}:
            raise RequestError("malformed numpy scalar: expected keys __npgeneric__, data, "
                               "dtype.")
        dtype, value = _dtype(obj[b"dtype"]), obj[b"data"]
        if not isinstance(value, bool | int | float):
            raise RequestError(f"malformed numpy scalar: data must be a number, got "
                               f"{type(value).__name__}.")
        try:
            return dtype.type(value)
        except (OverflowError, ValueError) as err:
            raise RequestError(f"numpy scalar {value!r} does not fit {dtype} ({err}).") from None
    return obj


def unpack(data, limits: Limits = Limits()) -> Any:
    """Decodes one message from a client; RequestError naming the problem if it is not msgpack,
    is truncated, is larger than `limits.max_message_bytes`, or holds a malformed array."""
    if isinstance(data, str):
        raise RequestError("got a text message; send the observation as binary msgpack "
                           "(openpi_client.msgpack_numpy.packb or rt2_jax.wire.pack).")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RequestError(f"expected a binary message, got {type(data).__name__}.")
    size = len(data)
    if size > limits.max_message_bytes:
        raise RequestError(f"message of {size} bytes exceeds the server's limit of "
                           f"{limits.max_message_bytes} bytes.")
    try:
        # Every length limit is at most the message size: a container cannot claim more
        # entries than the message has bytes (msgpack refuses before allocating).
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, object_hook=_unpack_numpy,
            max_str_len=size, max_bin_len=size,
            max_array_len=size, max_map_len=size, max_ext_len=0, use_list=True)
    except RequestError:
        raise
    except msgpack.StackError:
        raise RequestError("message is nested too deeply to be an observation.") from None
    except msgpack.FormatError:
        raise RequestError("message is not msgpack (it holds a byte msgpack never uses).") from None
    except msgpack.ExtraData:
        raise RequestError("message holds more than one msgpack object; send one observation "
                           "per message.") from None
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise RequestError(f"message is not valid msgpack ({type(err).__name__}: {err}).") from None


# ---------------------------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------------------------


def _flatten(obj: Mapping, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_NESTING:
        raise RequestError(f"observation maps are nested more than {_MAX_NESTING} deep.")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise RequestError(f"observation keys must be strings, got {key!r}.")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/", depth + 1))
        else:
            out[name] = value
    return out


def _one_of(flat: dict, keys: tuple[str, ...], what: str):
    present = [k for k in keys if k in flat]
    if not present:
        raise RequestError(f"observation has no {what}: send it under one of {list(keys)}.")
    if len(present) > 1:
        raise RequestError(f"observation has the {what} twice ({present}); send one of them.")
    return flat[present[0]]


def parse_observation(obs, limits: Limits = Limits()) -> tuple[np.ndarray, str]:
    """A decoded observation -> (uint8 [H, W, 3] image, instruction); RequestError naming the
    first problem: missing, duplicate or unknown keys, wrong types, dtype, rank, channels, image
    sides outside [min_image_side, max_image_side], an empty or too long instruction."""
    if not isinstance(obs, Mapping):
        raise RequestError(f"the observation must be a map (dict), got {type(obs).__name__}.")
    flat = _flatten(obs)
    known = set(IMAGE_KEYS) | set(INSTRUCTION_KEYS)
    unknown = sorted(set(flat) - known)
    if unknown:
        raise RequestError(f"unknown observation keys {unknown}: this policy reads one RGB "
                           f"image ({' or '.join(IMAGE_KEYS)}) and one instruction "
                           f"({' or '.join(INSTRUCTION_KEYS)}), nothing else.")
    image = _one_of(flat, IMAGE_KEYS, "image")
    instruction = _one_of(flat, INSTRUCTION_KEYS, "instruction")
    if not isinstance(image, np.ndarray):
        raise RequestError(f"image must be a numpy uint8 array [H, W, 3], got "
                           f"{type(image).__name__}.")
    if image.dtype != np.uint8:
        raise RequestError(f"image must have dtype uint8 (RGB 0..255), got {image.dtype}.")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise RequestError(f"image must have shape [H, W, 3] (one RGB image), got "
                           f"{list(image.shape)}.")
    height, width = image.shape[:2]
    if max(height, width) > limits.max_image_side:
        raise RequestError(f"image of shape {list(image.shape)} is larger than the server's "
                           f"limit of {limits.max_image_side} px a side; downscale it.")
    if min(height, width) < limits.min_image_side:
        raise RequestError(f"image of shape {list(image.shape)} is smaller than "
                           f"{limits.min_image_side} px a side; send the camera frame.")
    if not isinstance(instruction, str):
        raise RequestError(f"instruction must be a string, got {type(instruction).__name__}.")
    if len(instruction) > limits.max_instruction_chars:
        raise RequestError(f"instruction of {len(instruction)} characters exceeds the server's "
                           f"limit of {limits.max_instruction_chars}.")
    if not instruction.strip():
        raise RequestError("instruction is empty; send the task, e.g. 'pick up the red block'.")
    return image, instruction
