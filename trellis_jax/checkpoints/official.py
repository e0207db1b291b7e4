"""Load and save official TRELLIS checkpoints without PyTorch.

    module, params = load_model("ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16")   # .json + .safetensors
    module, params = load_model("TRELLIS-image-large", "slat_dec_gs_swin8_B_64l8gs32_fp16")
    save_model("out/ckpts/my_dec", "SLatGaussianDecoder", args, params)       # official layout + dtypes
    pipe = load_pipeline("TRELLIS-image-large")                               # every model of pipeline.json
    save_pipeline(dir, "image", {role: (NAME, class, args, params)}, ss_sampler=..., slat_sampler=...)

Loading is strict: one `CheckpointMismatchError` lists every missing, unexpected and mis-shaped
tensor and names the file. Files are written to a temporary name and renamed, so an interrupted
save never leaves a corrupt checkpoint behind.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from trellis_jax.atomic import atomic_write_many
from trellis_jax.checkpoints import keymap
from trellis_jax.models.registry import MODEL_CLASSES, build_model, dummy_inputs


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or malformed."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not match the network built from its json."""


def checkpoint_paths(prefix: str | Path) -> tuple[Path, Path]:
    """(NAME.json, NAME.safetensors) of a checkpoint given as NAME, NAME.json or NAME.safetensors."""
    p = Path(prefix)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".safetensors")


def _parse_json(path: Path):
    """The parsed JSON of `path`; a CheckpointError naming it when it is missing or not JSON."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def read_json(path: Path) -> dict:
    """A checkpoint's NAME.json: {"name": <ModelClass>, "args": {...}}."""
    cfg = _parse_json(path)
    if not isinstance(cfg, dict) or "name" not in cfg or "args" not in cfg:
        raise CheckpointError(f'{path}: expected {{"name": <ModelClass>, "args": {{...}}}}')
    return cfg


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # truncated / corrupt header or data
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from e


def param_template(module) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """Flat {flax path: ShapeDtypeStruct} of `module`'s params, without allocating them."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *dummy_inputs(module))
    return traverse_util.flatten_dict(nn.meta.unbox(shapes)["params"])


def map_state_dict(tensors: dict[str, np.ndarray], template: dict, source: str, param_dtype=jnp.float32) -> dict:
    """Official tensors -> Flax {'params': ...}; strict, all problems reported together."""
    stacked = {k: tuple(v.shape) for k, v in template.items()}
    shapes = keymap.unstack_scanned(stacked)  # official keys name unrolled blocks
    out, unexpected, misshaped = {}, [], []
    for key, arr in tensors.items():
        path = keymap.resolve_flax_leaf(key, shapes)
        if path is None:
            unexpected.append(key)
            continue
        try:
            value = keymap.to_flax(arr, path, shapes[path])
        except ValueError as e:
            misshaped.append(f"{key}: {e}")
            continue
        if tuple(value.shape) != shapes[path]:
            misshaped.append(f"{key}: file {tuple(arr.shape)} -> {tuple(value.shape)}, model expects {shapes[path]}")
            continue
        out[path] = value
    missing = sorted(keymap.official_key(shapes, p) for p in shapes if p not in out)
    if missing or unexpected or misshaped:
        lines = [f"{source}: checkpoint does not match the network"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(sorted(items)[:25]) + (" ..." if len(items) > 25 else ""))
        raise CheckpointMismatchError("\n".join(lines))
    out = keymap.stack_scanned(out, stacked)
    return {"params": traverse_util.unflatten_dict({k: jnp.asarray(v, param_dtype) for k, v in out.items()})}


def _checkpoint_prefix(path: str | Path, name: str | None) -> Path:
    """'dir/ckpts/NAME' from a prefix (or its .json/.safetensors), or from (repo or ckpts dir, NAME)."""
    if name is None:
        return Path(path)
    d = Path(path)
    for cand in (d / name, d / "ckpts" / name):
        if checkpoint_paths(cand)[0].exists():
            return cand
    raise CheckpointError(f"{d}: no checkpoint {name!r} (looked for {d / name}.json and {d / 'ckpts' / name}.json)")


def load_model(path: str | Path, name: str | None = None, *, param_dtype=jnp.float32, **module_overrides) -> tuple[Any, dict]:
    """Official checkpoint -> (Flax module, params {'params': ...} as plain arrays of `param_dtype`).

    `load_model('dir/ckpts/NAME')` (or its .json/.safetensors), or `load_model(dir, 'NAME')` with `dir`
    a repository (holding `ckpts/`) or a ckpts directory. `module_overrides` (e.g.
    `dtype=jnp.bfloat16`, `attn_impl='pallas'`) set the module's compute fields.
    """
    json_path, st_path = checkpoint_paths(_checkpoint_prefix(path, name))
    cfg = read_json(json_path)
    if not isinstance(cfg["args"], dict):
        raise CheckpointError(f'{json_path}: "args" must be an object of model arguments, got {cfg["args"]!r}')
    try:
        module = build_model(cfg["name"], cfg["args"], **module_overrides)
        template = param_template(module)  # a wrong-typed argument fails here
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(f"{json_path}: cannot build {cfg['name']} from its args ({type(e).__name__}: {msg})") from e
    params = map_state_dict(read_safetensors(st_path), template, str(st_path), param_dtype)
    return module, params


def export_state_dict(params: dict, use_fp16: bool) -> dict[str, np.ndarray]:
    """Flax params -> official {key: tensor} with the released dtypes."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params).get("params", params))
    flat = keymap.unstack_scanned({k: np.asarray(v, np.float32) for k, v in flat.items()})
    out = {}
    shapes = {k: v.shape for k, v in flat.items()}
    for path, value in flat.items():
        tensor = keymap.from_flax(value, path)
        out[keymap.official_key(shapes, path)] = np.ascontiguousarray(tensor.astype(keymap.official_dtype(shapes, path, use_fp16)))
    return out


def save_model(path: str | Path, class_name: str, args: dict, params: dict, name: str | None = None) -> tuple[Path, Path]:
    """Write `PREFIX.json` + `PREFIX.safetensors` in the official layout and dtypes (atomically).

    PREFIX is `path` (e.g. 'out/ckpts/NAME'), or `path/NAME` when `name` is given. Tensors are f16 under
    the fp16 trunk modules when `args['use_fp16']` (docs/reference_facts.md#checkpoints), f32 otherwise.
    """
    from safetensors.numpy import save_file

    json_path, st_path = checkpoint_paths(Path(path) / name if name is not None else path)
    tensors = export_state_dict(params, bool(args.get("use_fp16", False)))
    config = json.dumps({"name": class_name, "args": args}, indent=4)
    atomic_write_many({st_path: lambda p: save_file(tensors, str(p)), json_path: lambda p: p.write_text(config)})
    return json_path, st_path


def _resolve_model_path(root: Path, ref: str, search_roots: Sequence[Path]) -> Path:
    candidates = [root / ref] + [Path(s) / ref for s in search_roots]
    parts = ref.split("/")
    if len(parts) > 2:  # 'Owner/Repo/ckpts/NAME': cross-repo reference
        candidates += [Path(s) / "/".join(parts[2:]) for s in [*search_roots, root.parent / parts[1]]]
        candidates += [Path(s) / parts[1] / "/".join(parts[2:]) for s in search_roots]
    for c in candidates:
        if checkpoint_paths(c)[0].exists():
            return c
    raise CheckpointError(f"{root / 'pipeline.json'}: model '{ref}' not found (looked in {[str(c) for c in candidates]})")


ROLE_CLASSES = {role: MODEL_CLASSES[name] for role, name in {  # pipeline.json role -> the network class it must hold
    "sparse_structure_flow_model": "SparseStructureFlowModel", "sparse_structure_decoder": "SparseStructureDecoder",
    "slat_flow_model": "SLatFlowModel", "slat_decoder_gs": "SLatGaussianDecoder",
    "slat_decoder_rf": "SLatRadianceFieldDecoder", "slat_decoder_mesh": "SLatMeshDecoder"}.items()}


PIPELINE_CLASSES = {"image": "TrellisImageTo3DPipeline", "text": "TrellisTextTo3DPipeline"}


def save_pipeline(directory: str | Path, kind: str, models: dict, *, ss_sampler: dict, slat_sampler: dict,
                  slat_normalization: dict | None = None, cond_model: str = "tiny-random",
                  cond_encoder: dict | None = None) -> Path:
    """Write a pipeline directory in the official layout: every model as `ckpts/NAME` (save_model),
    then `pipeline.json` last and atomically, so a pipeline.json on disk always names complete models.

    kind: 'image' | 'text'. models: {role: (NAME, class_name, args, params)} with the pipeline.json
    roles (ROLE_CLASSES). Samplers are {'name', 'args', 'params'} dicts as in the released files;
    slat_normalization {'mean': [8], 'std': [8]}; cond_encoder is this project's extra entry telling
    load_pipeline's callers which condition encoder to build ({'kind', 'arch', 'seed', 'weights'}).
    """
    from trellis_jax.atomic import atomic_write_text

    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"pipeline kind must be one of {sorted(PIPELINE_CLASSES)}, got {kind!r}")
    unknown = sorted(set(models) - set(ROLE_CLASSES))
    if unknown:
        raise ValueError(f"unknown pipeline role(s) {unknown}; roles are {sorted(ROLE_CLASSES)}")
    directory = Path(directory)
    for role, (name, class_name, args, params) in models.items():
        save_model(directory / "ckpts" / name, class_name, args, params)
    args = {"models": {role: f"ckpts/{spec[0]}" for role, spec in models.items()},
            "sparse_structure_sampler": ss_sampler, "slat_sampler": slat_sampler,
            ("image_cond_model" if kind == "image" else "text_cond_model"): cond_model}
    if slat_normalization is not None:
        args["slat_normalization"] = {k: [float(v) for v in slat_normalization[k]] for k in ("mean", "std")}
    if cond_encoder is not None:
        args["cond_encoder"] = dict(cond_encoder)
    path = directory / "pipeline.json"
    atomic_write_text(path, json.dumps({"name": PIPELINE_CLASSES[kind], "args": args}, indent=2))
    return path


def load_pipeline(directory: str | Path, search_roots: Sequence[str | Path] = (), **module_overrides) -> dict:
    """Read `pipeline.json` and load every referenced model.

    Returns {'name', 'models': {role: (module, params)}, 'sparse_structure_sampler', 'slat_sampler',
    'slat_normalization', 'cond_model', 'raw'}.
    """
    directory = Path(directory)
    pj = directory / "pipeline.json"
    raw = _parse_json(pj)
    args = raw.get("args", raw) if isinstance(raw, dict) else None
    if not isinstance(args, dict) or not isinstance(args.get("models"), dict):
        raise CheckpointError(f"{pj}: no 'models' section ({{role: 'ckpts/NAME'}})")
    models = {}
    for role, ref in args["models"].items():
        prefix = _resolve_model_path(directory, ref, [Path(s) for s in search_roots])
        models[role] = load_model(prefix, **module_overrides)
        expected = ROLE_CLASSES.get(role)
        if expected is not None and not isinstance(models[role][0], expected):
            raise CheckpointError(f"{pj}: role '{role}' needs a {expected.__name__}, but {ref} is a "
                                  f"{type(models[role][0]).__name__}")
    return {
        "name": raw.get("name"),
        "models": models,
        "sparse_structure_sampler": args.get("sparse_structure_sampler", {}),
        "slat_sampler": args.get("slat_sampler", {}),
        "slat_normalization": args.get("slat_normalization"),
        "cond_model": args.get("image_cond_model") or args.get("text_cond_model"),
        "raw": raw,
    }
