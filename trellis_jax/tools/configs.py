"""Load ml_collections config files given as 'path/to/file.py:variant' (the config_flags syntax)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'experiments/models/slat_flow.py:tiny' -> get_config('tiny') of that file."""
    path, _, variant = spec.partition(":")
    p = Path(path)
    if not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise FileNotFoundError(f"config file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"cfg_{p.stem}", p)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{p}: config files must define get_config()")
    return module.get_config(variant) if variant else module.get_config()


def model_from_config(cfg: ml_collections.ConfigDict, **overrides):
    """Flax module of a model config (checkpoint, class_name, args)."""
    from trellis_jax.models.registry import build_model

    args = cfg.args.to_dict() if hasattr(cfg.args, "to_dict") else dict(cfg.args)
    return build_model(cfg.class_name, args, **overrides)


def all_model_specs() -> list[str]:
    """Every released-checkpoint config (not the tiny ones)."""
    return [
        "experiments/models/ss_vae.py:enc", "experiments/models/ss_vae.py:dec",
        "experiments/models/ss_flow.py:img_L", "experiments/models/ss_flow.py:txt_B",
        "experiments/models/ss_flow.py:txt_L", "experiments/models/ss_flow.py:txt_XL",
        "experiments/models/slat_flow.py:img_L", "experiments/models/slat_flow.py:txt_B",
        "experiments/models/slat_flow.py:txt_L", "experiments/models/slat_flow.py:txt_XL",
        "experiments/models/slat_vae.py:enc", "experiments/models/slat_vae.py:dec_gs",
        "experiments/models/slat_vae.py:dec_rf", "experiments/models/slat_vae.py:dec_mesh",
    ]
