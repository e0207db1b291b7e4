"""Writes files in torch.save's two layouts (zip and legacy) without torch, for the .pth reader tests.

An emulation from the serialisation format (persistent ids ('storage', <torch.XStorage>, key, location,
numel[, view]), tensors reduced to torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)),
not torch itself: torch is not installed in the project venv.
"""
import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


def _fake_torch():
    """Module objects named torch / torch._utils so pickle records the globals torch would."""
    torch = sys.modules.get("_fake_torch") or types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*a):
        raise AssertionError("never called when writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
    torch._utils = utils
    return torch, utils


class Storage:
    def __init__(self, key: str, flat: np.ndarray):
        self.key, self.flat = key, np.ascontiguousarray(flat)


class Tensor:
    def __init__(self, storage: Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _pickler(f, torch, legacy: bool):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                st = getattr(torch, _NAMES[obj.flat.dtype])
                pid = ("storage", st, obj.key, "cpu", obj.flat.size)
                return pid + (None,) if legacy else pid
            return None

        def reducer_override(self, obj):
            if isinstance(obj, Tensor):
                return torch._utils._rebuild_tensor_v2, (obj.storage, obj.offset, obj.size, obj.stride, False, OrderedDict())
            return NotImplemented

    return P(f, protocol=2)


def save(state: dict, path, legacy: bool) -> None:
    """state: {key: Tensor} (Tensor views of Storage objects, possibly shared / strided)."""
    torch, utils = _fake_torch()
    saved = (sys.modules.get("torch"), sys.modules.get("torch._utils"))
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        storages = {}
        for t in state.values():
            storages[t.storage.key] = t.storage
        body = io.BytesIO()
        _pickler(body, torch, legacy).dump(OrderedDict(state))
    finally:
        for name, mod in zip(("torch", "torch._utils"), saved):
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    if legacy:
        with open(path, "wb") as f:
            for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
                pickle.dump(obj, f, protocol=2)
            f.write(body.getvalue())
            keys = sorted(storages)
            pickle.dump(keys, f, protocol=2)
            for k in keys:
                f.write(struct.pack("<q", storages[k].flat.size))
                f.write(storages[k].flat.astype(storages[k].flat.dtype.newbyteorder("<")).tobytes())
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", body.getvalue())
            z.writestr("archive/byteorder", "little")
            for k, s in storages.items():
                z.writestr(f"archive/data/{k}", s.flat.tobytes())


def save_arrays(arrays: dict, path, legacy: bool) -> None:
    """Contiguous arrays, one storage each."""
    state = {}
    for i, (k, a) in enumerate(arrays.items()):
        a = np.ascontiguousarray(a)
        strides = tuple(s // a.itemsize for s in a.strides)
        state[k] = Tensor(Storage(str(i), a.reshape(-1)), 0, a.shape, strides)
    save(state, path, legacy)
