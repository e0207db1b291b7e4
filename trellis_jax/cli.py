"""`trellis-jax` command line: one entry point, one subcommand per job.

    trellis-jax demo        the embedded end-to-end default (no weights needed)
    trellis-jax generate    image/text -> 3D assets from a pipeline directory (official or demo weights)
    trellis-jax edit        detail variation / region editing of a generated asset
    trellis-jax builtin-data the built-in procedural meshes + captions -> a manifest (data_pipeline.builtin)
    trellis-jax build-data  meshes -> renders, voxels, features -> ArrayRecord (data_pipeline.build)
    trellis-jax encode-data a built dataset + trained VAE encoders -> the same records + latents (data_pipeline.encode)
    trellis-jax train       rectified-flow / VAE training from an ml_collections config
    trellis-jax app         a browser front end: image/text in, turntable video + GLB/PLY downloads out
    trellis-jax export      a generated asset's latents.npz -> PLY / GLB / preview with a pipeline's decoder
    trellis-jax convert     official checkpoint <-> check / re-save (dtype-exact), parameter counts
    trellis-jax eval        reconstruction / generation metrics tables (PSNR, LPIPS, CD, F-score, CLIP, FD, KD)
    trellis-jax aot         compile a training step or the sampler for a TPU topology here: memory, FLOPs, est. time
Each subcommand has --help.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("trellis_jax.demo", "the embedded end-to-end default"),
    "generate": ("trellis_jax.sample", "image/text -> 3D assets"),
    "edit": ("trellis_jax.edit", "detail variation and region editing"),
    "builtin-data": ("data_pipeline.builtin", "write the built-in procedural dataset (meshes + manifest)"),
    "build-data": ("data_pipeline.build", "build an ArrayRecord dataset from a manifest"),
    "encode-data": ("data_pipeline.encode", "add SS / SLat latents to a dataset with trained VAE encoders"),
    "train": ("trellis_jax.train", "train a model from a config"),
    "app": ("trellis_jax.webapp", "a web app: image/text in, preview video and GLB/PLY out"),
    "export": ("trellis_jax.export.cli", "export latents to PLY/GLB/preview"),
    "convert": ("trellis_jax.checkpoints.cli", "check / re-save official checkpoints"),
    "sweep": ("trellis_jax.sweep", "run an ablation sweep"),
    "eval": ("trellis_jax.eval.cli", "reconstruction and generation metrics as the paper's tables"),
    "aot": ("trellis_jax.aot", "compile a job for a TPU topology ahead of time (memory, FLOPs, est. step time)"),
}


def usage() -> str:
    lines = [__doc__.splitlines()[0], "", "usage: trellis-jax COMMAND [args]", "", "commands:"]
    lines += [f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"trellis-jax: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    sys.argv = [f"trellis-jax {cmd}"] + rest
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
