"""The Pallas block-sparse attention kernel vs cuDNN flash attention on the same active blocks (GPU).

    python benchmarks/attention_kernels.py [--tiny]

Tokens [B, L, H, D] in groups of G contiguous tokens (3D windows after sorting; G = 512 = 8³ is the
SLat VAE's window): the Pallas kernel (`kernels/block_sparse_attention.py`, Triton grid on GPU) gets
segment ids, `jax.nn.dot_product_attention(implementation='cudnn')` gets the same groups as a
[B·L/G, G, H, D] batch, so both compute exactly the active G×G blocks. FLOPs: 4·B·L·G·H·D forward,
3.5× that forward + backward (flash convention). Times are medians of `--repeats` calls after a
warm-up. `--tiny` (CPU check): L = 512, G = 128, the kernel in interpret mode and XLA instead of cuDNN.
One line per measurement: `device_suite: attention impl=<i> ... fwd_tflops=<x> fwdbwd_tflops=<y>`.
"""
import argparse

import jax
import jax.numpy as jnp

from kernels.block_sparse_attention import block_sparse_attention
from timing import time_calls


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU-sized check (interpret-mode kernel, XLA attention)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    if args.tiny:
        B, L, G, H, D, dtype, ref_impl, repeats = 1, 512, 128, 2, 32, jnp.float32, "xla", 2
    else:
        B, L, G, H, D, dtype, ref_impl, repeats = 2, 16384, 512, 12, 64, jnp.bfloat16, "cudnn", args.repeats
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (B, L, H, D), dtype) for key in (kq, kk, kv))
    seg = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32) // G, (B, L))

    def pallas(q, k, v):
        return block_sparse_attention(q, k, v, seg, max_group=G)

    def reference(q, k, v):
        grouped = lambda x: x.reshape(B * L // G, G, H, D)
        out = jax.nn.dot_product_attention(grouped(q), grouped(k), grouped(v), implementation=ref_impl)
        return out.reshape(B, L, H, D)

    fwd_flops = 4.0 * B * L * G * H * D
    err = float(jnp.max(jnp.abs(jax.jit(pallas)(q, k, v).astype(jnp.float32) - jax.jit(reference)(q, k, v).astype(jnp.float32))))
    for name, fn in (("pallas_block_sparse", pallas), (ref_impl, reference)):
        fwd = jax.jit(fn)
        loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)
        fwdbwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        t_f = time_calls(lambda _: fwd(q, k, v), repeats).median_s
        t_fb = time_calls(lambda _: fwdbwd(q, k, v), repeats).median_s
        print(f"device_suite: attention impl={name} B={B} L={L} group={G} heads={H} head_dim={D} dtype={jnp.dtype(dtype).name} "
              f"fwd_s={t_f:.4g} fwdbwd_s={t_fb:.4g} fwd_tflops={fwd_flops / t_f / 1e12:.4g} "
              f"fwdbwd_tflops={3.5 * fwd_flops / t_fb / 1e12:.4g} max_abs_diff_vs_reference={err:.3g}", flush=True)


if __name__ == "__main__":
    main()
