"""Condition encoders: jitted once per conditioner, so encoding many batches of one shape compiles once,
and the jitted call equals the pure `tokens` function the trainer's step uses."""
import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.conditioning import load_image_conditioner, load_text_conditioner


def test_image_encoder_compiles_once_for_three_batches(compiles):
    enc = load_image_conditioner(arch="tiny", seed=0)
    g = np.random.default_rng(0)
    batches = [g.uniform(0, 1, (2, enc.image_size, enc.image_size, 3)).astype(np.float32) for _ in range(3)]
    outs = [enc.encode_arrays(b) for b in batches]
    assert compiles.count("jit(tokens)") == 1, compiles
    cfg = enc.model.config
    assert outs[0].shape == (2, cfg.num_tokens, cfg.hidden_size) and outs[0].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(outs[2]), np.asarray(enc.tokens(enc.params, jnp.asarray(batches[2]))), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))


def test_text_encoder_compiles_once_for_three_batches(compiles):
    enc = load_text_conditioner(arch="tiny", seed=0)
    outs = [enc([f"a chair number {i}", "a red box"]) for i in range(3)]
    neg = enc.negative(2)  # the empty caption at batch 1: a second shape, compiled once more
    enc.negative(3)
    assert compiles.count("jit(tokens)") == 2, compiles
    assert outs[0].shape == (2, 77, 64) and neg.shape == (2, 77, 64)
    ids = enc.token_ids(["a chair number 2", "a red box"])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    np.testing.assert_allclose(np.asarray(outs[2]), np.asarray(jax.jit(enc.tokens)(enc.params, ids)), rtol=1e-5, atol=1e-5)


def test_encode_conditions_layouts():
    """Plain prompts repeat per copy in a row; multi-image stacks all prompts into one asset's condition."""
    from trellis_jax.conditioning import encode_conditions

    class Stub:
        def __call__(self, prompts):
            return np.stack([np.full((2, 3), float(p)) for p in prompts])

        def negative(self, batch):
            return np.zeros((batch, 2, 3))

    cond, neg = encode_conditions(Stub(), [1, 2], copies=2)
    assert cond.shape == (4, 2, 3) and neg.shape == (4, 2, 3)
    np.testing.assert_array_equal(cond[:, 0, 0], [1, 1, 2, 2])
    cond, neg = encode_conditions(Stub(), [1, 2, 3], multi_image=True, copies=2)
    assert cond.shape == (2, 3, 2, 3) and neg.shape == (2, 2, 3)
    np.testing.assert_array_equal(cond[1, :, 0, 0], [1, 2, 3])
    cond, neg = encode_conditions(Stub(), [5], multi_image=True)
    assert cond.shape == (1, 1, 2, 3) and neg.shape == (1, 2, 3)
