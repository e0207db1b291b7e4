"""The SS VAE's dense 3D conv (on CPU: x-slab 2-D convs) against XLA's 3-D convolution, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.modules.dense_conv import SLAB_OUT_CHANNELS, conv3d


def _xla(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, (stride,) * 3, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


@pytest.mark.parametrize("shape, cin, cout, k", [
    ((2, 5, 6, 7), 3, 4, 3),
    ((1, 4, 4, 5), 2, SLAB_OUT_CHANNELS + 44, 3),  # several output-channel chunks, the last one short
    ((1, 3, 4, 2), 3, 2, 1),  # the 1×1×1 skip connection
    ((1, 6, 5, 4), 2, 3, 5),
])
def test_conv3d_matches_xla_3d_conv_values_and_gradients(shape, cin, cout, k):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape + (cin,)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, k, cin, cout)) / np.sqrt(k**3 * cin), jnp.float32)
    ct = jnp.asarray(rng.standard_normal(shape + (cout,)), jnp.float32)
    got, want = jax.jit(conv3d)(x, w), _xla(x, w, 1, "SAME")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * ct), argnums=(0, 1)))
    for a, b in zip(grad(conv3d)(x, w), grad(lambda x, w: _xla(x, w, 1, "SAME"))(x, w)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_strided_conv3d_is_the_valid_downsampling_and_even_same_kernels_are_rejected():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4, 4, 4, 2)), jnp.float32)
    w = jnp.ones((2, 2, 2, 2, 3), jnp.float32)
    np.testing.assert_allclose(np.asarray(conv3d(x, w, 2)), np.asarray(_xla(x, w, 2, "VALID")), atol=1e-5)
    with pytest.raises(ValueError, match="odd kernel"):
        conv3d(x, w)
