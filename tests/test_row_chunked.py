"""`row_chunked`: slicing a row-wise function over the token axis changes neither values nor gradients."""
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.modules.layers import row_chunked
from trellis_jax.modules.transformer import FeedForward


@pytest.mark.parametrize("L,rows", [(7, 3), (12, 4), (5, 8)])
def test_row_chunked_mlp_matches_whole_sequence_values_and_gradients(L, rows):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, L, 16))
    mlp = FeedForward(16, 2.0)
    params = flax.linen.meta.unbox(mlp.init(jax.random.PRNGKey(1), x))
    w1, w2 = (params["params"][k] for k in ("mlp_0", "mlp_2"))
    whole = lambda p, t: jax.nn.gelu(t @ p[0]["kernel"] + p[0]["bias"], approximate=True) @ p[1]["kernel"] + p[1]["bias"]
    sliced = lambda p, t: row_chunked(lambda s: whole(p, s), t, rows)
    loss = lambda f: (lambda p, t: jnp.sum(jnp.sin(f(p, t))))
    np.testing.assert_allclose(sliced((w1, w2), x), whole((w1, w2), x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mlp.apply(params, x), whole((w1, w2), x), rtol=1e-6, atol=1e-6)
    g_sliced = jax.grad(loss(sliced), argnums=(0, 1))((w1, w2), x)
    g_whole = jax.grad(loss(whole), argnums=(0, 1))((w1, w2), x)
    for a, b in zip(jax.tree.leaves(g_sliced), jax.tree.leaves(g_whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_row_chunked_slices_evenly_and_keeps_short_sequences_whole():
    seen = []
    f = lambda t: (seen.append(t.shape[1]), 2 * t)[1]
    x = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3)
    np.testing.assert_array_equal(row_chunked(f, x, 4), 2 * x)
    assert seen == [4, 4, 2]
    seen.clear()
    row_chunked(f, x, 16)
    assert seen == [10]


def test_row_chunked_slices_on_cpu_only():
    """The CPU program holds the slices' concatenate; a TPU lowering runs fn on the whole sequence."""
    f = jax.jit(lambda t: row_chunked(lambda s: jnp.tanh(s) * 2.0, t, 4))
    x = jnp.ones((1, 10, 3))
    cpu = f.trace(x).lower(lowering_platforms=("cpu",)).as_text()
    tpu = f.trace(x).lower(lowering_platforms=("tpu",)).as_text()
    assert "concatenate" in cpu and "concatenate" not in tpu
