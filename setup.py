"""trellis-jax: a JAX/Flax reimplementation of TRELLIS (structured 3D latents)."""
from setuptools import find_packages, setup

setup(
    name="trellis-jax",
    version="0.1.0",
    description="TRELLIS structured 3D latents in JAX/Flax: sparse core, networks, training, sampling.",
    python_requires=">=3.12",
    packages=find_packages(include=["trellis_jax*", "kernels*", "data_pipeline*", "experiments*"]),
    install_requires=[
        "jax>=0.12",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint>=0.12",
        "grain",
        "array-record",
        "numpy",
        "transformers",
        "trimesh",
        "pyrender",
        "ml_collections",
        "tensorboardX",
        "safetensors",
        "einops",
        "tqdm",
        "pillow",
        "scipy",
        "rtree",
        "imageio",
        "imageio-ffmpeg",
        "xatlas",
        "fast-simplification",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "nbconvert", "nbclient", "ipykernel", "apache-beam",
                "playwright"],  # drives Debian's /usr/bin/chromium in tests/test_webapp.py (no browser download)
        # the TPU compiler, for `trellis-jax aot` on any host (and the runtime on a TPU VM)
        "tpu": ["libtpu"],
    },
    entry_points={"console_scripts": ["trellis-jax=trellis_jax.cli:main"]},
)
