"""Device mesh, logical-axis sharding rules and batch placement for training.

The modules name every parameter dimension with a logical axis (`nn.with_logical_partitioning`):
`embed`, `mlp`, `qkv`, `cond`, `io`, `norm`, `conv_in`, `conv_out`, `kernel_offsets`, `layers` (the
stacked block axis of scanned models) or None.
One rules table maps them onto the mesh axes `('data', 'fsdp', 'tensor')`:

* `data`   — pure data parallelism (batch only; params replicated over it),
* `fsdp`   — data parallelism whose params / optimizer state / EMA are sharded over it (ZeRO-3),
* `tensor` — Megatron-style tensor parallelism of the MLP hidden and attention head dims.

A training config carries `mesh = ConfigDict(data=..., fsdp=..., tensor=...)` (one of them may be -1:
the remaining devices) and optionally `sharding.rules` (a list of `(logical_name, mesh_axes)` pairs)
to override `DEFAULT_RULES`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# (logical name, mesh axes). A name may appear several times: the first entry whose mesh axes are
# still free in that parameter's spec and divide the dimension is used (e.g. the second `embed` of an
# [embed, embed] kernel stays replicated because `fsdp` is already taken by the first).
DEFAULT_RULES: Rules = (
    ("embed", "fsdp"),  # model width: the large dim of every trunk weight -> FSDP
    ("cond", "fsdp"),  # condition width (input dim of cross-attention K/V)
    ("conv_in", "fsdp"),  # sparse-conv / resblock input channels
    ("mlp", "tensor"),  # MLP hidden and adaLN modulation outputs -> tensor parallel
    ("qkv", "tensor"),  # attention projections (heads) -> tensor parallel
    ("conv_out", "tensor"),  # sparse-conv / resblock output channels
    ("io", None),  # network input/output channels (8 latent channels, patch*channels, ...)
    ("kernel_offsets", None),  # k³ conv kernel offsets
    ("norm", None),  # LayerNorm scale/bias, QK-RMSNorm gamma: replicated
    ("layers", None),  # the stacked [num_blocks] axis of scanned blocks: every chip holds its shard of each
)


# --------------------------------------------------------------------------------------------------
# mesh


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg[key] for dicts and ConfigDicts, getattr otherwise; `default` when absent."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Resolve `(data, fsdp, tensor)` with at most one -1 against `num_devices`."""
    sizes = [int(_get(mesh_cfg, a, 1)) for a in MESH_AXES]
    unknown = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    bad = [f"{a}={s}" for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
    if bad:
        raise ValueError(f"mesh sizes must be positive or -1, got {', '.join(bad)}")
    if len(unknown) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {unknown} in {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by the "
                f"product {known} of the fixed axes, so '{unknown[0]}=-1' cannot be inferred")
        sizes[MESH_AXES.index(unknown[0])] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, but "
            f"{num_devices} are available; set the sizes (e.g. --config.mesh.fsdp=-1) to multiply to {num_devices}")
    return tuple(sizes)


def _device_array(shape: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
    """Topology-aware device layout (TPU ICI rings; slices over DCN along `data`, else `fsdp`)."""
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices > 1:
        for i in (0, 1):  # put the slice (DCN) dimension on data, or on fsdp if data does not divide
            if shape[i] % num_slices == 0:
                ici = list(shape)
                ici[i] //= num_slices
                dcn = [1, 1, 1]
                dcn[i] = num_slices
                return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
        raise ValueError(f"{num_slices} slices: mesh data={shape[0]} or fsdp={shape[1]} must be a multiple of it")
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            return np.asarray(devices, dtype=object).reshape(shape)


def make_mesh(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp', 'tensor') from `ConfigDict(data, fsdp, tensor)` (one may be -1).

    `devices` defaults to all of `jax.devices()`; the sizes must multiply to their number.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(_device_array(shape, devices), MESH_AXES)


# --------------------------------------------------------------------------------------------------
# rules


def _norm_axes(axes: Any) -> MeshAxes:
    if axes is None or isinstance(axes, str):
        return axes
    axes = tuple(axes)
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def normalize_rules(rules: Iterable[Any]) -> Rules:
    """Validate `[(logical_name, mesh_axes), ...]` (mesh_axes: str, list/tuple of str, or None)."""
    out = []
    for r in rules:
        if len(r) != 2 or not isinstance(r[0], str):
            raise ValueError(f"a sharding rule is (logical_name, mesh_axes), got {r!r}")
        axes = _norm_axes(r[1])
        for a in (axes,) if isinstance(axes, str) else (axes or ()):
            if a not in MESH_AXES:
                raise ValueError(f"sharding rule {tuple(r)!r}: unknown mesh axis {a!r}; mesh axes are {MESH_AXES}")
        out.append((r[0], axes))
    return tuple(out)


def rules_from_config(cfg: Any) -> Rules:
    """`cfg.sharding.rules` when the config has them, else `DEFAULT_RULES`."""
    sharding = _get(cfg, "sharding")
    rules = _get(sharding, "rules") if sharding is not None else None
    return normalize_rules(DEFAULT_RULES if rules is None else rules)


def _axes_tuple(axes: MeshAxes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules, where: str = "") -> P:
    """PartitionSpec of one array from its logical axis names.

    Per dimension, the first rule for its name whose mesh axes are unused so far and whose size
    product divides the dimension wins; otherwise that dimension is replicated.
    """
    if len(names) != len(shape):
        raise ValueError(f"{where or 'array'}: {len(names)} logical axis names {tuple(names)} for shape {tuple(shape)}")
    table: dict[str, list[MeshAxes]] = {}
    for name, axes in rules:
        table.setdefault(name, []).append(axes)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, dim in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(
                f"{where or 'array'}: logical axis {name!r} has no sharding rule; known logical names: "
                f"{sorted(table)} (add it to DEFAULT_RULES or to the config's sharding.rules)")
        choice: MeshAxes = None
        for axes in table[name]:
            ax = _axes_tuple(axes)
            if not ax:
                break  # an explicit "replicate" entry ends the search
            size = math.prod(mesh.shape[a] for a in ax)
            if used.isdisjoint(ax) and dim % size == 0:
                choice = axes
                used.update(ax)
                break
        spec.append(choice)
    return P(*spec)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/") if path else "<root>"


def tree_specs(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """PartitionSpec per array of a (possibly boxed) abstract tree; boxes are replaced by specs.

    `nn.LogicallyPartitioned` boxes go through `rules`, plain `nn.Partitioned` boxes already name mesh
    axes, anything unboxed (step, rng, scalars, clipping buffers) is replicated.
    """
    rules = normalize_rules(rules)
    mesh_rules = tuple((a, a) for a in mesh.axis_names)

    def one(path, x):
        if _is_box(x):
            value = x.value
            shape = getattr(value, "shape", ())
            table = rules if isinstance(x, nn.LogicallyPartitioned) else mesh_rules
            return logical_to_spec(x.names, shape, mesh, table, where=_path_str(path))
        return P()

    return jax.tree_util.tree_map_with_path(one, abstract_tree, is_leaf=_is_box)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedSharding per array of an abstract (eval_shape) train state; see `tree_specs`.

    The result has the structure of the *unboxed* tree, so it is valid both as jit in/out shardings
    of the unboxed state and (as a tree prefix) of the boxed one.
    """
    specs = tree_specs(abstract_tree, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


# --------------------------------------------------------------------------------------------------
# batches


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over ('data', 'fsdp'); every other axis replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host-local batch (pytree of numpy arrays, leading axis = this host's examples) -> global jax.Arrays.

    Multi-host safe: every process passes its own slice; the global batch is their concatenation.
    0-d leaves are replicated (every host must pass the same value).
    """
    sharding = batch_sharding(mesh)
    n_batch = math.prod(mesh.shape[a] for a in BATCH_AXES)
    n_local = n_batch // jax.process_count() if n_batch >= jax.process_count() else 1

    def one(path, x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), x)
        if x.shape[0] % n_local:
            raise ValueError(
                f"batch leaf {_path_str(path)} has {x.shape[0]} examples on this host, not divisible by the "
                f"{n_local} batch shards (data x fsdp = {n_batch} over {jax.process_count()} processes)")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(one, batch)


# --------------------------------------------------------------------------------------------------
# multi-host start

_ENV_MULTIHOST = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _env_says_multihost() -> bool:
    if any(os.environ.get(k) for k in _ENV_MULTIHOST):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return True
    for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(k, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def maybe_initialize_distributed(cfg: Any) -> None:
    """Call `jax.distributed.initialize` once when the run is multi-process.

    `cfg.distributed` is either a bool or a block `(enabled, coordinator_address, num_processes,
    process_id)`; `enabled=None` (or no block) means "auto": initialise when the environment names a
    coordinator / several TPU workers / an MPI or SLURM job. With empty fields JAX discovers the
    values itself (TPU metadata, SLURM, MPI). Must run before anything touches the JAX backend.
    """
    block = _get(cfg, "distributed")
    if isinstance(block, bool) or block is None:
        enabled, kwargs = block, {}
    else:
        enabled = _get(block, "enabled")
        kwargs = {k: _get(block, k) for k in ("coordinator_address", "num_processes", "process_id")}
        kwargs = {k: v for k, v in kwargs.items() if v not in (None, "", -1)}
    if enabled is None:
        enabled = _env_says_multihost()
    if not enabled or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(**kwargs)
