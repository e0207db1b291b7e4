"""Read a PyTorch `.pth` / `.pt` state dict into numpy arrays without PyTorch.

Both serialisations `torch.save` has used are understood:
  * zip (torch >= 1.6): `<archive>/data.pkl` plus one raw little-endian file per storage, `<archive>/data/<key>`;
  * legacy (older, e.g. torchvision's VGG16 and the lpips package's weights): a stream of pickles (magic
    number, protocol, system info, the object) followed by the storage keys and, per storage, an int64
    element count and the raw bytes.
Unpickling is restricted to what a state dict holds (OrderedDict, tensor rebuild functions, storage
types): any other global is refused, so a file cannot run code. Returns {dotted key: np.ndarray}.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """A .pth file that is not a readable PyTorch state dict."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Storage:
    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise TorchFileError(f"storage {self.storage.key!r} has no data")
        if not self.size:
            return flat[self.offset].copy()
        itemsize = flat.dtype.itemsize
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if min(self.size) > 0 and end > len(flat):
            raise TorchFileError(f"tensor of shape {self.size} runs past its storage {self.storage.key!r}")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * itemsize for s in self.stride])
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(tensor, *_):
    return tensor


_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not part of a state dict)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(STORAGE_DTYPES[storage_type.name], key, numel)
        return self.storages[key]


def _as_numpy(raw: bytes, dtype) -> np.ndarray:
    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))


def _flatten(obj, prefix="") -> dict[str, np.ndarray]:
    if isinstance(obj, _TensorRef):
        return {prefix: obj.array()}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {}  # non-tensor entries (versions, hyperparameters) are not part of the weights


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise TorchFileError(f"{path}: zip archive without data.pkl (not a torch.save file)")
        root = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with z.open(pkl[0]) as f:
            obj = _Unpickler(f, storages).load()
        for key, s in storages.items():
            s.data = _as_numpy(z.read(f"{root}data/{key}"), s.dtype)
    return _flatten(obj)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise TorchFileError(f"{path}: not a PyTorch file (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info (endianness, type sizes)
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            s = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            itemsize = 2 if s.dtype == "bfloat16" else np.dtype(s.dtype).itemsize
            raw = f.read(numel * itemsize)
            if len(raw) != numel * itemsize:
                raise TorchFileError(f"{path}: truncated (storage {key} has {len(raw)} of {numel * itemsize} bytes)")
            s.data = _as_numpy(raw, s.dtype)
    return _flatten(obj)


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """{key: array} of a `torch.save`d state dict (zip or legacy format); TorchFileError names the file."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: file not found")
    try:
        return _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error, zipfile.BadZipFile) as e:
        raise TorchFileError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
