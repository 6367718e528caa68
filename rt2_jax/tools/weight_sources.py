"""Read-one-tensor-at-a-time access to published checkpoints, without torch or transformers.

- `SafetensorsSource`: a Hugging Face model directory: `model.safetensors`, or shards listed in
  `*.safetensors.index.json` (its `weight_map`). Only the JSON headers are read up front; `read`
  seeks to one tensor and reads its bytes (bfloat16 through ml_dtypes, which JAX ships).
- `NpzSource`: a big_vision `.npz` (flattened `a/b/c` keys). Shapes come from each member's
  `.npy` header; `read` decompresses one member (numpy's lazy NpzFile).

Both give `infos()` {key: TensorInfo} and `read(key)` -> np.ndarray; errors name the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile

import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class SafetensorsSource:
    """The tensors of a Hugging Face directory saved as safetensors (one file or shards)."""

    def __init__(self, directory: str):
        self.path = directory
        self._infos: dict[str, TensorInfo] = {}
        self._offsets: dict[str, int] = {}   # absolute byte offset of each tensor's data
        for file in self._files(directory):
            self._read_header(file)

    @staticmethod
    def _files(directory: str) -> list[str]:
        names = sorted(os.listdir(directory))
        indexes = [n for n in names if n.endswith(".safetensors.index.json")]
        if len(indexes) > 1:
            raise ValueError(f"{directory} holds several safetensors index files {indexes}; "
                             "keep the one of the model to import.")
        if indexes:
            path = os.path.join(directory, indexes[0])
            with open(path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{path} has no 'weight_map'; is it a safetensors index file?")
            files = sorted(set(weight_map.values()))
            missing = [n for n in files if not os.path.exists(os.path.join(directory, n))]
            if missing:
                raise FileNotFoundError(f"{path} lists shards that are missing: {missing}; "
                                        "download every shard of the model.")
            return [os.path.join(directory, n) for n in files]
        files = [n for n in names if n.endswith(".safetensors")]
        if not files:
            other = [n for n in names if n.endswith((".bin", ".pt", ".h5", ".msgpack"))]
            hint = (f" It has {other}: save the model as safetensors first "
                    "(model.save_pretrained(dir, safe_serialization=True))." if other else "")
            raise FileNotFoundError(f"{directory} holds no *.safetensors file.{hint}")
        if len(files) > 1:
            raise ValueError(f"{directory} holds several safetensors files {files} but no "
                             "*.safetensors.index.json saying which belong to the model.")
        return [os.path.join(directory, files[0])]

    def _read_header(self, file: str) -> None:
        with open(file, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{file} is not a safetensors file (shorter than 8 bytes).")
            (length,) = struct.unpack("<Q", raw)
            size = os.path.getsize(file)
            if length > size - 8:
                raise ValueError(f"{file} is not a safetensors file (header length {length} "
                                 f"exceeds the file size {size}); is it truncated?")
            try:
                header = json.loads(f.read(length))
            except ValueError as e:
                raise ValueError(f"{file}: unreadable safetensors header ({e}).") from e
        data_start = 8 + length
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise ValueError(f"{file}: tensor {key} has dtype {entry.get('dtype')!r}, which "
                                 f"this reader does not know ({sorted(_SAFETENSORS_DTYPES)}).")
            begin, end = entry["data_offsets"]
            info = TensorInfo(key, tuple(int(d) for d in entry["shape"]), dtype, file)
            if end - begin != info.nbytes or data_start + end > size:
                raise ValueError(f"{file}: tensor {key} {info.shape} {dtype} does not fit its "
                                 f"byte range {begin}..{end}; the file is damaged or truncated.")
            if key in self._infos:
                raise ValueError(f"tensor {key} is stored twice ({self._infos[key].file} and "
                                 f"{file}).")
            self._infos[key] = info
            self._offsets[key] = data_start + begin

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        count = int(np.prod(info.shape, dtype=np.int64))
        with open(info.file, "rb") as f:
            f.seek(self._offsets[key])
            array = np.fromfile(f, dtype=info.dtype.newbyteorder("<"), count=count)
        if array.size != count:
            raise ValueError(f"{info.file}: tensor {key} ended after {array.size} of {count} "
                             "values; the file is truncated.")
        return array.reshape(info.shape)

    def close(self) -> None:
        """Nothing stays open between reads."""


class NpzSource:
    """The arrays of a big_vision `.npz` checkpoint (flattened `a/b/c` keys)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable .npz file: {e}") from e
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not a flattened checkpoint (.npz).")
        self._infos = {key: self._header(key) for key in self._npz.files}

    def _header(self, key: str) -> TensorInfo:
        with self._npz.zip.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{self.path}: array {key} has .npy format {version}, which "
                                 "this reader does not know.")
        return TensorInfo(key, tuple(int(d) for d in shape), _bfloat16_if_void(dtype), self.path)

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def read(self, key: str) -> np.ndarray:
        array = self._npz[key]
        if array.dtype != self._infos[key].dtype:   # 2-byte void written for bfloat16
            array = array.view(self._infos[key].dtype)
        return array

    def close(self) -> None:
        self._npz.close()


def _bfloat16_if_void(dtype: np.dtype) -> np.dtype:
    """np.savez writes bfloat16 arrays (ml_dtypes) as 2-byte void ('|V2'): read them back as
    bfloat16, the only 2-byte floating type JAX checkpoints hold besides float16 (which numpy
    records as such)."""
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.fields is None:
        return np.dtype(ml_dtypes.bfloat16)
    return dtype


def open_source(path: str, what: str):
    """A source for `--vit` / `--encdec`: a `.npz` file or a Hugging Face directory."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--{what}={path} does not exist.")
    if os.path.isfile(path):
        if path.endswith(".npz"):
            return NpzSource(path)
        raise ValueError(f"--{what}={path}: expected a big_vision .npz file or a Hugging Face "
                         "model directory (config.json + *.safetensors).")
    return SafetensorsSource(path)


def hf_config(directory: str) -> dict:
    """config.json of a Hugging Face model directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "checkpoint")):
            raise ValueError(
                f"{directory} looks like a T5X checkpoint (a 'checkpoint' file, no config.json). "
                "T5X checkpoints are not read directly: convert it to a Hugging Face directory "
                "first (transformers' T5X-to-PyTorch conversion script), then import that.")
        raise FileNotFoundError(f"{directory} has no config.json; point at a Hugging Face model "
                                "directory (config.json + *.safetensors).")
    with open(path) as f:
        return json.load(f)
