"""Regenerate experiments/colab_sampling.ipynb (run from the repo root): python tools/make_colab_notebook.py"""
import nbformat as nbf
nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s))
code = lambda s: cells.append(nbf.v4.new_code_cell(s))
md("""# trellis-jax: batch sampling in one jitted call

Loads a TRELLIS pipeline directory (official `TRELLIS-image-large` layout: `pipeline.json` + `ckpts/`, or one written by `trellis-jax demo`) and samples a **batch** of assets from a batch of images in **one** jitted call, then shows previews inline.

* On Colab: set `WEIGHTS` to a checkpoint directory (e.g. a download of `microsoft/TRELLIS-image-large`) and `DINOV2` to an HF-format `facebook/dinov2-with-registers-large` directory; use a GPU/TPU runtime.
* With neither set (as in CI), a tiny pipeline with **random weights** is written first, so the notebook runs top to bottom anywhere in about a minute. Its outputs are noise-shaped blobs, not objects.""")
code("""# Install (Colab). Skipped when trellis-jax is already importable (local checkout, CI).
import importlib.util, subprocess, sys
if importlib.util.find_spec("trellis_jax") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/trellis-jax/trellis-jax.git"], check=True)""")
code("""import os, tempfile, time
from pathlib import Path
import numpy as np
import jax, jax.numpy as jnp
from PIL import Image
from IPython.display import display

WEIGHTS = os.environ.get("TRELLIS_WEIGHTS")      # pipeline directory, or None for the random tiny one
DINOV2 = os.environ.get("TRELLIS_DINOV2")        # HF-format DINOv2-with-registers directory (optional)
BATCH = 4
print("JAX", jax.__version__, "devices:", jax.devices())""")
code("""from trellis_jax.sample import load_generator
from trellis_jax.sampling.random_pipeline import write_random_pipeline

if WEIGHTS is None:
    WEIGHTS = write_random_pipeline(Path(tempfile.mkdtemp()) / "tiny_random", steps=4)
    print("no WEIGHTS given: using a tiny RANDOM-weight pipeline at", WEIGHTS)
pipe, cond_model, kind = load_generator(WEIGHTS, capacity=4096, image_encoder=DINOV2)
print(kind, "pipeline;", "condition encoder:", cond_model.description)
print("stage-1 sampler:", pipe.ss_sampler); print("stage-2 sampler:", pipe.slat_sampler)""")
code("""# A batch of condition images (RGBA, object on a transparent background). Replace with your own files.
def toy_image(i, size=128):
    img = np.zeros((size, size, 4), np.uint8)
    colour = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40)][i % 4]
    yy, xx = np.mgrid[:size, :size]
    shape = ((xx - 64) ** 2 + (yy - 64) ** 2 < (20 + 8 * i) ** 2) if i % 2 else ((abs(xx - 64) < 30) & (abs(yy - 64) < 20 + 5 * i))
    img[shape] = colour + (255,)
    return Image.fromarray(img)

images = [toy_image(i) for i in range(BATCH)]
display(Image.fromarray(np.concatenate([np.asarray(im) for im in images], 1)))""")
code("""cond = cond_model(images)                      # [B, T, C]
neg = cond_model.negative(BATCH)
seeds = np.arange(BATCH)
t0 = time.time()
out = pipe.sample(cond, neg, seeds, on_error="flag")   # ONE jitted call: G_S -> SS decoder -> coords -> G_L -> decoders
jax.block_until_ready(out["latents"])
print(f"first call (compile + sample): {time.time() - t0:.1f}s")
t0 = time.time()
out = pipe.sample(cond, neg, seeds + 100, on_error="flag")
jax.block_until_ready(out["latents"])
print(f"second call (compiled): {time.time() - t0:.1f}s for {BATCH} assets; voxels per asset: {np.asarray(out['num_voxels']).tolist()}")""")
code("""from trellis_jax.render.preview import render_views

previews = []
for b in range(BATCH):
    if not out["ok"][b]:
        print(f"sample {b}: structure empty or over capacity, skipped"); continue
    views = render_views(out["gaussian"].sample(b), np.deg2rad([30, 210]), [0.35, 0.35], resolution=192)  # same compiled renderer as the exported preview
    previews.append(np.concatenate(list(views), 0))
if previews:
    display(Image.fromarray(np.concatenate(previews, 1)))""")
code("""# Save one asset: 3DGS PLY, voxel PLY/GLB, preview (the same files `trellis-jax generate` writes).
from trellis_jax.export.asset import export_sample
res = pipe._module("slat_flow_model").resolution
ok = [b for b in range(BATCH) if out["ok"][b]]
if ok:
    files = export_sample(out, ok[0], Path(tempfile.mkdtemp()) / "asset0", res)
    print({k: str(v) for k, v in files.items()})""")
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb["metadata"]["accelerator"] = "GPU"
nbf.write(nb, "experiments/colab_sampling.ipynb")
