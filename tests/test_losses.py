"""Reference training losses: SSIM vs a brute-force 2D window, KL, Dice, Gaussian regularisers."""
import jax.numpy as jnp
import numpy as np

from trellis_jax.losses.image import reconstruction_loss, ssim
from trellis_jax.losses.vae import dice_loss, gaussian_regularizers, kl_divergence


def _ssim_numpy(a, b):
    x = np.arange(11) - 5.0
    g = np.exp(-x**2 / 4.5)
    g /= g.sum()
    w2 = np.outer(g, g)

    def blur(img):  # zero-padded 'same' 2D correlation per channel
        B, H, W, C = img.shape
        p = np.pad(img, ((0, 0), (5, 5), (5, 5), (0, 0)))
        out = np.zeros_like(img)
        for i in range(11):
            for j in range(11):
                out += w2[i, j] * p[:, i:i + H, j:j + W]
        return out

    mu_a, mu_b = blur(a), blur(b)
    saa, sbb, sab = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 1e-4, 9e-4
    return np.mean((2 * mu_a * mu_b + c1) * (2 * sab + c2) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)))


def test_ssim_matches_bruteforce_and_identity():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(2, 20, 24, 3)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(float(ssim(jnp.asarray(a), jnp.asarray(b))), _ssim_numpy(a.astype(np.float64), b.astype(np.float64)), rtol=1e-4)
    np.testing.assert_allclose(float(ssim(jnp.asarray(a), jnp.asarray(a))), 1.0, atol=1e-5)
    loss, terms = reconstruction_loss(jnp.asarray(a), jnp.asarray(a))
    assert float(loss) < 1e-5 and "lpips" not in terms


def test_kl_dice_and_regularizers_hand_values():
    mean = jnp.array([[[1.0, 0.0]], [[0.0, 0.0]]])
    logvar = jnp.zeros((2, 1, 2))
    np.testing.assert_allclose(float(kl_divergence(mean, logvar)), 0.5 * 1 / 4)
    mask = jnp.array([[True], [False]])
    np.testing.assert_allclose(float(kl_divergence(mean, logvar, mask)), 0.5 * 1 / 2)
    logits = jnp.array([0.0, 0.0])  # p = 0.5 each
    np.testing.assert_allclose(float(dice_loss(logits, jnp.array([1.0, 0.0]))), 1 - (2 * 0.5 + 1) / (1 + 1 + 1))
    r = gaussian_regularizers(jnp.full((1, 2, 3), 0.1), jnp.array([[0.5, 1.0]]), jnp.array([[True, False]]))
    np.testing.assert_allclose(float(r["volume"]), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(r["opacity"]), 0.25)
