"""Mesh-decoder task: frozen-encoder latents -> FlexiCubes features at 4× the latent grid -> mesh ->
rasterised mask / depth / normal / colour vs the GT view, plus the reference's regularisers.

    loss = reg + 0.01·TSDF + L1(mask) + 10·SmoothL1_{β=1/(2·res)}(depth·mask) + L_rec(normal·mask) + 0.1·L_rec(colour)
    reg  = mean((corner attrs − their shared-vertex average)²) + 0.5·L_dev + 0.2·mean(|weights[:, :20]|)

(res = the FlexiCubes grid, 256 released.) The surface is FlexiCubes' training split
(`dual_mesh(training=True)`: a γ-weighted centre vertex and four triangles per quad,
docs/reference_facts.md#flexicubes-quad-split), differentiable in vertex positions, colours and γ; the renders come from
`render.mesh_raster` (near 1, far 3) with antialiased silhouettes, so the mask has a gradient. TSDF: the
distinct grid vertices of the active cubes (deformed), projected into the view; target = GT depth there
(bilinear, border) − vertex depth, kept where > −3/res, clamped to ±3/res; loss = mean (sdf − target)².
GT normals face the camera, world space, mapped to [0, 1]; the GT colour is composited on black.
L_rec = L1 + 0.2·(1 − SSIM) (LPIPS left out: no VGG weights). `raster_overflow` / `mesh_overflow` are logged.
Batch: as `rf_decoder`, plus depth [B, S, S] and normal [B, S, S, 3].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trellis_jax.losses.image import absolute, l1, reconstruction_loss
from trellis_jax.models.slat_mesh_decoder import mesh_channel_split
from trellis_jax.render import mesh_raster as mr
from trellis_jax.render.mesh_raster import project_vertices
from trellis_jax.representations.mesh.cube_tables import CORNERS
from trellis_jax.representations.mesh.flexicubes import dual_mesh
from trellis_jax.representations.mesh.sparse_grid import SENTINEL, build_cube_grid, grid_key, grid_position, sorted_unique
from trellis_jax.training.tasks.decoder_base import DecoderTask


def smooth_l1(a, b, beta: float):
    d = jnp.abs(a - b)
    return jnp.mean(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta))


def vertex_table(coords, mask, attrs, resolution: int):
    """Distinct corners of the active cubes: (positions int [8L, 3], valid [8L], attrs averaged over the
    cubes sharing each [8L, A], consistency = mean over active corners of (attrs − average)²)."""
    L = coords.shape[0]
    vkeys = jnp.where(mask[:, None], grid_key(coords[:, None, :] + jnp.asarray(CORNERS)[None], resolution + 1), SENTINEL)
    table, slot, _ = sorted_unique(vkeys.reshape(-1), 8 * L)
    flat = attrs.reshape(8 * L, -1)
    total = jax.ops.segment_sum(flat, slot, num_segments=8 * L + 1)[:-1]
    n = jax.ops.segment_sum(jnp.ones((8 * L,), jnp.float32), slot, num_segments=8 * L + 1)[:-1]
    avg = total / jnp.maximum(n, 1.0)[:, None]
    live = (vkeys.reshape(-1) != SENTINEL)[:, None]
    sq = jnp.where(live, jnp.square(flat - avg[jnp.minimum(slot, 8 * L - 1)]), 0.0)
    consistency = jnp.sum(sq) / jnp.maximum(jnp.sum(live) * flat.shape[-1], 1)
    valid = table != SENTINEL
    return grid_position(jnp.where(valid, table, 0), resolution + 1), valid, avg, consistency


class MeshDecoderTask(DecoderTask):
    stage = "mesh_decoder"

    def _one(self, coords, feats, mask, E, K, gt):
        """One asset, one view -> (renders dict, reg terms dict)."""
        r = self.cfg.render
        res = self.mesh_resolution
        parts = mesh_channel_split(feats.astype(jnp.float32), True)
        sdf = parts["sdf"] - 1.0 / res
        attrs = jnp.concatenate([sdf[..., None], parts["deform"], parts["color"]], -1)
        vpos, vvalid, vavg, consistency = vertex_table(coords, mask, attrs, res)
        grid = build_cube_grid(coords, mask, sdf, parts["deform"], parts["color"], parts["weights"], res, self.max_cubes)
        dm = dual_mesh(grid, training=True)
        l_dev = jnp.sum(dm.deviation) / jnp.maximum(jnp.sum(dm.num_edges), 1)
        n_active = jnp.maximum(jnp.sum(mask), 1)
        w_abs = jnp.sum(jnp.where(mask[:, None], absolute(parts["weights"][:, :20]), 0.0)) / (20 * n_active)
        # TSDF on the deformed distinct vertices
        S = self.image_size
        delta = 3.0 / res
        x = vpos / res - 0.5 + (1 - 1e-8) / (2 * res) * jnp.tanh(vavg[:, 1:4])
        uv, z = project_vertices(jax.lax.stop_gradient(x), E[None], K[None], S, S)
        px = jnp.clip(uv[0] / S * (S - 1), 0, S - 1)  # the reference's align_corners=True sampling
        i0 = jnp.minimum(jnp.floor(px).astype(jnp.int32), S - 2)
        f = px - i0
        dmap = gt["depth"]
        top = dmap[i0[:, 1], i0[:, 0]] * (1 - f[:, 0]) + dmap[i0[:, 1], i0[:, 0] + 1] * f[:, 0]
        bot = dmap[i0[:, 1] + 1, i0[:, 0]] * (1 - f[:, 0]) + dmap[i0[:, 1] + 1, i0[:, 0] + 1] * f[:, 0]
        pseudo = top * (1 - f[:, 1]) + bot * f[:, 1] - z[0]
        keep = vvalid & (pseudo > -delta)
        tsdf = jnp.sum(jnp.where(keep, jnp.square(vavg[:, 0] - jnp.clip(pseudo, -delta, delta)), 0.0)) / jnp.maximum(jnp.sum(keep), 1)
        # renders
        ras = mr.rasterize_mesh(dm.vertices, dm.faces, dm.face_mask, E[None], K[None], height=S, width=S, near=1.0, far=3.0,
                                tile_capacity=int(r.tile_capacity))
        covered = ras.mask[..., None].astype(jnp.float32)
        normal = mr.camera_facing_normal_map(dm.vertices, dm.faces, ras, E[None])  # the targets' convention
        colour = mr.interpolate(dm.colors[:, :3], ras, dm.faces)
        stack = jnp.concatenate([covered, ras.depth[..., None], normal, colour], -1)
        img = mr.antialias(stack, ras, dm.faces)[0]
        renders = {"mask": img[..., 0], "depth": img[..., 1], "normal": img[..., 2:5], "color": img[..., 5:8]}
        reg = {"consistency": consistency, "l_dev": l_dev, "weights_abs": w_abs, "tsdf": tsdf,
               "raster_overflow": ras.overflow[0].astype(jnp.float32), "mesh_overflow": grid.overflow.astype(jnp.float32)}
        return renders, reg

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mesh_resolution = 4 * self.resolution  # two 2× subdivisions
        self.max_cubes = int(cfg.render.get("max_cubes", 0) or 64 * self.capacity)

    def loss(self, params, batch, rng, frozen=None):
        decoded = self.decoder.apply(params, self.latents(batch, frozen))
        gt = {k: batch[k] for k in ("depth",)}
        renders, reg = jax.vmap(self._one)(decoded.coords, decoded.feats, decoded.mask, batch["extrinsics"],
                                            batch["intrinsics"], gt)
        reg = jax.tree.map(jnp.mean, reg)
        m = batch["alpha"]
        mask_loss = l1(renders["mask"], m)
        depth_loss = smooth_l1(renders["depth"] * m, batch["depth"] * m, 1.0 / (2 * self.mesh_resolution))
        sw = float(self.cfg.loss.ssim_weight)
        normal_loss, _ = reconstruction_loss(renders["normal"] * m[..., None], batch["normal"] * m[..., None], ssim_weight=sw)
        colour_loss, _ = reconstruction_loss(renders["color"], batch["image"] * m[..., None], ssim_weight=sw)
        w = self.cfg.loss
        reg_loss = reg["consistency"] + float(w.dev_weight) * reg["l_dev"] + float(w.weights_reg) * reg["weights_abs"]
        loss = (reg_loss + float(w.tsdf_weight) * reg["tsdf"] + mask_loss + float(w.depth_weight) * depth_loss
                + normal_loss + float(w.color_weight) * colour_loss)
        return loss, {"reg": reg_loss, **reg, "mask": mask_loss, "depth": depth_loss, "normal": normal_loss, "color": colour_loss}
