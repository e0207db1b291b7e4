"""The one config loader: ml_collections files given as 'path/to/file.py[:variant]', plus overrides.

Every job reads its config here (train, demo, aot, build-data, sweep, eval): a python file defines
`get_config(variant)` (or another entry point, e.g. a sweep's `get_sweep()`), and command-line
`--config.dotted.key=value` strings are applied on top with `apply_overrides` (values parsed as Python
literals; unknown keys are an error naming the key and its siblings).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_module(path: str | Path, attr: str):
    """Import a config file as a module, checking it defines `attr` (e.g. 'get_config')."""
    p = Path(path)
    if not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"cfg_{p.stem}", p)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, attr):
        raise AttributeError(f"{p}: this kind of config file must define {attr}()")
    return module


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """'experiments/train/ss_flow.py:tiny' -> that file's get_config('tiny'), then `overrides`
    ('dotted.key=value' strings, see apply_overrides). No variant calls get_config()."""
    path, _, variant = str(spec).partition(":")
    module = load_module(path, "get_config")
    cfg = module.get_config(variant) if variant else module.get_config()
    return apply_overrides(cfg, overrides)


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


def split_config_overrides(rest, error) -> list[str]:
    """Command-line leftovers `--config.a.b=v` / `--config.a.b v` -> ['a.b=v', ...]; anything else
    calls `error(message)` (argparse's `ap.error`)."""
    overrides, i = [], 0
    while i < len(rest):
        a = rest[i]
        if not a.startswith("--config."):
            error(f"unrecognised argument {a!r} (overrides look like --config.key=value)")
        a = a[len("--config."):]
        if "=" not in a:
            if i + 1 >= len(rest):
                error(f"--config.{a} needs a value")
            a, i = f"{a}={rest[i + 1]}", i + 1
        overrides.append(a)
        i += 1
    return overrides


class ConfigKeyError(KeyError):
    """An override names a key the config does not have."""

    def __str__(self):
        return str(self.args[0])


def _parse_value(text: str, current):
    import ast

    if isinstance(current, str):
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
        return text[1:-1] if quoted else text
    if isinstance(current, bool) or text in ("True", "False", "true", "false"):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Apply 'dotted.key=value' strings (config_flags syntax) to cfg in place; values are parsed as
    Python literals (strings stay strings where the field is a string). Unknown keys raise
    ConfigKeyError naming the key and the keys that exist at that level."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} is not of the form dotted.key=value")
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "<top level>"
                raise ConfigKeyError(f"unknown config key {key!r}: {where} has no field {part!r} (its fields: {sorted(known)})")
            if i < len(parts) - 1:
                node = node[part]
        current = node[parts[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigKeyError(f"config key {key!r} is a block, override one of its fields: {sorted(current.keys())}")
        value = _parse_value(text, current)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            node[parts[-1]] = value
        except TypeError as e:
            raise ValueError(f"config key {key!r}: cannot set {value!r} ({e})") from e
    return cfg
