"""`trellis-jax convert`: load official checkpoints strictly, print parameter counts, re-save exactly.

    trellis-jax convert check  DIR/ckpts/NAME [...]        strict load + count (fails with the full key report)
    trellis-jax convert resave DIR/ckpts/NAME OUT/ckpts/NAME   load and write back (official dtypes, atomic)
    trellis-jax convert pipeline DIR                        load every model of DIR/pipeline.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import jax

from trellis_jax.checkpoints.official import (
    CheckpointError, checkpoint_paths, load_model, load_pipeline, read_json, save_model,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-jax convert", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("prefixes", nargs="+")
    r = sub.add_parser("resave")
    r.add_argument("src")
    r.add_argument("dst")
    p = sub.add_parser("pipeline")
    p.add_argument("dir")
    p.add_argument("--ckpt-root", nargs="*", default=[])
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            for pre in args.prefixes:
                module, params = load_model(pre)
                n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
                print(f"{pre}: {type(module).__name__} {n:,} params OK")
        elif args.cmd == "resave":
            module, params = load_model(args.src)
            cfg = read_json(checkpoint_paths(args.src)[0])
            print("wrote", *save_model(args.dst, cfg["name"], cfg["args"], params))
        else:
            loaded = load_pipeline(args.dir, search_roots=args.ckpt_root)
            for role, (m, prm) in loaded["models"].items():
                print(f"{role}: {type(m).__name__} {sum(int(np.prod(a.shape)) for a in jax.tree.leaves(prm)):,} params")
            print(json.dumps({"ss_sampler": loaded["sparse_structure_sampler"], "slat_sampler": loaded["slat_sampler"]}))
    except CheckpointError as e:
        print(f"trellis-jax convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
