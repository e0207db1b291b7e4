"""`scan_blocks`: G_S, G_L and the SLat VAE trunks (their swin blocks alternate two window layouts) with
their blocks under one `nn.scan` compute what the unrolled (released) layout computes, forward and gradient, and official `blocks.{i}.*` keys load into the stacked params and
re-save as the same keys and tensors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from experiments.models import slat_flow as slat_flow_cfg, slat_vae as slat_vae_cfg, ss_flow as ss_flow_cfg
from trellis_jax.checkpoints import keymap
from trellis_jax.checkpoints.official import export_state_dict, map_state_dict, param_template
from trellis_jax.models.registry import build_model
from trellis_jax.sparse.tensor import SparseTensor


def _inputs(model, key):
    k1, k2, k3 = jax.random.split(key, 3)
    if not hasattr(model, "cond_channels"):  # a SLat VAE network: voxels only
        n = 40
        coords = jnp.stack([jnp.stack(jnp.unravel_index(jax.random.permutation(k, 24**3)[:n], (24,) * 3), -1) + 20 for k in jax.random.split(k1, 2)]).astype(jnp.int32)
        mask = jnp.arange(n)[None] < jnp.array([[n], [29]])
        cin = getattr(model, "in_channels", model.latent_channels)
        return (SparseTensor(coords, jnp.where(mask[..., None], jax.random.normal(k2, (2, n, cin)), 0.0), mask, 64),)
    t = jax.random.uniform(k2, (2,))
    cond = jax.random.normal(k3, (2, 5, model.cond_channels))
    if model.__class__.__name__ == "SparseStructureFlowModel":
        r = model.resolution
        return jax.random.normal(k1, (2, r, r, r, model.in_channels)), t, cond
    n = 24
    coords = jnp.stack([jnp.stack(jnp.unravel_index(jax.random.permutation(k, 64**3)[:n], (64,) * 3), -1) for k in jax.random.split(k1, 2)]).astype(jnp.int32)
    mask = jnp.arange(n)[None] < jnp.array([[n], [17]])
    feats = jnp.where(mask[..., None], jax.random.normal(k1, (2, n, model.in_channels)), 0.0)
    return SparseTensor(coords, feats, mask, 64), t, cond


def _feats(y):
    """Every float output leaf of y (a SparseTensor's feats, an array, a decoder's Gaussians), flattened."""
    return jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(y) if jnp.issubdtype(l.dtype, jnp.floating)])


@pytest.mark.parametrize("cfg_mod,variant,remat", [(ss_flow_cfg, "tiny", False), (slat_flow_cfg, "tiny", True),
                                                   (slat_vae_cfg, "tiny_dec_gs", False), (slat_vae_cfg, "tiny_enc", True)],
                         ids=["ss_flow", "slat_flow_remat", "slat_dec_gs", "slat_enc_remat"])
def test_scanned_blocks_match_unrolled_forward_gradient_and_keys(cfg_mod, variant, remat):
    cfg = cfg_mod.get_config(variant)
    args = {**cfg.args.to_dict(), "use_checkpoint": remat}
    unrolled = build_model(cfg.class_name, args)
    scanned = build_model(cfg.class_name, {**args, "scan_blocks": True})
    x = _inputs(unrolled, jax.random.PRNGKey(0))
    params = unrolled.init(jax.random.PRNGKey(1), *x)
    # the released zero-init gates/out layer would hide the blocks: perturb every leaf
    leaves, tree = jax.tree_util.tree_flatten(params)
    params = jax.tree_util.tree_unflatten(tree, [l + 0.05 * jax.random.normal(jax.random.PRNGKey(i), l.shape) for i, l in enumerate(leaves)])

    official = export_state_dict(params, use_fp16=False)
    assert any(k.startswith("blocks.1.") for k in official)
    sparams = map_state_dict(official, param_template(scanned), "test")
    flat = traverse_util.flatten_dict(sparams["params"])
    assert not any(p[0].startswith("blocks_") for p in flat)
    n = args["num_blocks"]
    assert all(v.shape[0] == n for p, v in flat.items() if p[0] == keymap.SCANNED_TOP)

    resaved = export_state_dict(sparams, use_fp16=False)
    assert sorted(resaved) == sorted(official)
    for k in official:
        np.testing.assert_array_equal(resaved[k], official[k])

    loss = lambda m, p: jnp.sum(_feats(m.apply(p, *x)) ** 2)
    np.testing.assert_allclose(_feats(scanned.apply(sparams, *x)), _feats(unrolled.apply(params, *x)), rtol=2e-5, atol=2e-5)
    g_unrolled = export_state_dict(jax.grad(lambda p: loss(unrolled, p))(params), use_fp16=False)
    g_scanned = export_state_dict(jax.grad(lambda p: loss(scanned, p))(sparams), use_fp16=False)
    assert sorted(g_scanned) == sorted(g_unrolled)
    for k in g_unrolled:
        # f32 summation-order error scales with the leaf's largest gradient, not with each element
        atol = 1e-5 * max(1.0, float(np.abs(g_unrolled[k]).max()))
        np.testing.assert_allclose(g_scanned[k], g_unrolled[k], rtol=1e-4, atol=atol, err_msg=k)
