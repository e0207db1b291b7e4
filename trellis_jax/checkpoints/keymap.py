"""Official state-dict keys <-> Flax parameter paths, and the tensor layout change for each leaf.

Naming rule (both directions): numeric key segments join the previous one (`blocks.3` <-> `blocks_3`,
`mlp.mlp.0` <-> `mlp/mlp_0`); sparse-conv wrappers `.conv.` have no Flax level (our SparseConv3d
holds its kernel directly). Leaves: Linear `weight [out,in]` <-> `kernel [in,out]`; dense Conv3d
`[O,I,kx,ky,kz]` <-> `[kx,ky,kz,I,O]`; sparse conv `[O,k,k,k,I]` <-> `[k³,I,O]`; norm `weight` <->
`scale`; `bias`, `gamma`, buffers `pos_emb` / `offset_perturbation` unchanged.
"""
from __future__ import annotations

import re

import numpy as np

# Linear/Conv weights and biases under these top-level modules are f16 in fp16 releases
# (docs/reference_facts.md#checkpoints).
FP16_TOP_LEVEL = {"blocks", "middle_block", "input_blocks", "out_blocks", "upsample"}
_NUM = re.compile(r"^\d+$")
_TRAILING = re.compile(r"^(.*)_(\d+)$")


def key_to_module_path(key: str) -> tuple[tuple[str, ...], str]:
    """'blocks.3.mlp.mlp.0.weight' -> (('blocks_3', 'mlp', 'mlp_0'), 'weight')."""
    parts = key.split(".")
    leaf, mods = parts[-1], parts[:-1]
    out: list[str] = []
    for p in mods:
        if _NUM.match(p) and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return tuple(out), leaf


def module_path_to_key(path: tuple[str, ...], leaf: str) -> str:
    segs = []
    for p in path:
        m = _TRAILING.match(p)
        segs.append(f"{m.group(1)}.{m.group(2)}" if m else p)
    return ".".join(segs + [leaf])


def resolve_flax_leaf(key: str, template: dict[tuple[str, ...], tuple]) -> tuple[str, ...] | None:
    """Flax path of official `key` inside the flat template {path: shape}, or None if absent."""
    mods, leaf = key_to_module_path(key)
    candidates = [mods]
    if mods and mods[-1] == "conv":
        candidates.append(mods[:-1])  # sparse-conv wrapper level
    names = {"weight": ("kernel", "scale"), "bias": ("bias",)}.get(leaf, (leaf,))
    for m in candidates:
        for n in names:
            if m + (n,) in template:
                return m + (n,)
    return None


def to_flax(array: np.ndarray, flax_path: tuple[str, ...], target_shape: tuple) -> np.ndarray:
    """Official tensor -> Flax layout (decided by the leaf name and the template's rank)."""
    a = np.asarray(array)
    leaf = flax_path[-1]
    if leaf != "kernel":
        return a
    if a.ndim == 2 and len(target_shape) == 2:  # Linear
        return a.T
    if a.ndim == 5 and len(target_shape) == 5:  # dense Conv3d [O,I,k,k,k]
        return a.transpose(2, 3, 4, 1, 0)
    if a.ndim == 5 and len(target_shape) == 3:  # sparse conv [O,k,k,k,I] -> [k³,I,O]
        o, k0, k1, k2, i = a.shape
        return a.reshape(o, k0 * k1 * k2, i).transpose(1, 2, 0)
    raise ValueError(f"cannot map a {a.shape} tensor onto kernel {flax_path} of shape {target_shape}")


def official_shape(flax_path: tuple[str, ...], shape: tuple) -> tuple:
    """Shape the official file stores for a Flax leaf of `shape` (the shape-level `from_flax`)."""
    s = tuple(shape)
    if flax_path[-1] != "kernel":
        return s
    if len(s) == 2:
        return s[::-1]
    if len(s) == 5:
        return (s[4], s[3], s[0], s[1], s[2])
    if len(s) == 3:
        k = round(s[0] ** (1 / 3))
        if k**3 != s[0]:
            raise ValueError(f"sparse kernel {flax_path} has {s[0]} offsets, not a cube")
        return (s[2], k, k, k, s[1])
    raise ValueError(f"unexpected kernel rank {len(s)} at {flax_path}")


def from_flax(array: np.ndarray, flax_path: tuple[str, ...]) -> np.ndarray:
    """Flax leaf -> tensor in the official layout (inverse of `to_flax`)."""
    a = np.asarray(array)
    if flax_path[-1] != "kernel":
        return a
    if a.ndim == 2:
        return a.T
    if a.ndim == 5:
        return a.transpose(4, 3, 0, 1, 2)
    if a.ndim == 3:
        k3, i, o = a.shape
        k = round(k3 ** (1 / 3))
        return a.transpose(2, 0, 1).reshape(o, k, k, k, i)
    raise ValueError(f"unexpected kernel rank {a.ndim} at {flax_path}")


def official_key(shapes: dict, flax_path: tuple[str, ...]) -> str:
    """Official key of a Flax leaf; `shapes` maps every flax path to its shape (to spot sparse convs,
    whose kernel is [k³, I, O] and whose official keys carry a `.conv.` wrapper)."""
    mods, leaf = flax_path[:-1], flax_path[-1]
    sparse = len(shapes.get(mods + ("kernel",), ())) == 3
    if sparse and leaf in ("kernel", "bias"):
        mods = mods + ("conv",)
    return module_path_to_key(mods, "weight" if leaf in ("kernel", "scale") else leaf)


def official_dtype(shapes: dict, flax_path: tuple[str, ...], use_fp16: bool):
    """Released dtype of a leaf: f16 for Linear/Conv weight+bias under the fp16 trunk modules
    (norm affines, QK gammas and buffers stay f32)."""
    top = re.sub(r"_\d+$", "", flax_path[0])
    is_linear_or_conv = flax_path[:-1] + ("kernel",) in shapes
    if use_fp16 and top in FP16_TOP_LEVEL and flax_path[-1] in ("kernel", "bias") and is_linear_or_conv:
        return np.float16
    return np.float32


# Scanned block stacks (`cross_block_stack(scan=True)`): one `blocks/...` leaf [n, ...] per block leaf,
# against the released `blocks.{i}.*` keys. Every official key goes through the unrolled `blocks_{i}`
# Flax path; these two functions are the only place the stacked layout is converted.
SCANNED_TOP = "blocks"


def unstack_scanned(flat: dict) -> dict:
    """{flax path: array or shape} with `blocks/...` leaves [n, ...] -> the same with `blocks_{i}/...` [...]."""
    out = {}
    for path, v in flat.items():
        if path[0] != SCANNED_TOP:
            out[path] = v
            continue
        shape = tuple(v) if isinstance(v, tuple) else tuple(v.shape)
        for i in range(shape[0]):
            out[(f"{SCANNED_TOP}_{i}",) + path[1:]] = shape[1:] if isinstance(v, tuple) else v[i]
    return out


def stack_scanned(flat: dict, template: dict) -> dict:
    """Inverse of `unstack_scanned` for the scanned leaves of `template` ({flax path: shape}); a no-op for
    unrolled models. Raises KeyError naming the first missing block leaf."""
    out = {p: v for p, v in flat.items() if not re.match(rf"^{SCANNED_TOP}_\d+$", p[0]) or p in template}
    for path, shape in template.items():
        if path[0] == SCANNED_TOP:
            out[path] = np.stack([np.asarray(flat[(f"{SCANNED_TOP}_{i}",) + path[1:]]) for i in range(shape[0])])
    return out
