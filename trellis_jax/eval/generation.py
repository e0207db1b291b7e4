"""Generation quality of a pipeline on held-out prompts (the paper's Table 2 protocol, DINOv2 columns).

Per held-out record: the prompt is its condition render `cfg.prompt_view` (image pipelines) or its first
caption (text pipelines); the pipeline samples an asset (seed `cfg.seed + index`), whose Gaussians are
rendered at the record's stored cameras. CLIP score: 100·cos of CLIP embeddings of each render with the
prompt (image or text), averaged over views. FD / KD: between DINOv2 features of all sample renders and
all ground-truth renders (KD reported ×100, as the paper). Samples that fail (empty structure, over
capacity, non-finite) are counted and listed, never silently dropped.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from trellis_jax.eval import metrics
from trellis_jax.eval.reconstruction import ground_truth_views
from trellis_jax.render.preview import render_gaussian_views


def prompt_of(kind: str, meta: dict, arrays: dict, view: int):
    """The record's prompt: an RGBA PIL image (its condition render `view`) or its first caption; None if absent."""
    from trellis_jax.data.schema import unpack_png

    if kind == "text":
        return meta["captions"][0] if meta.get("captions") else None
    offsets = arrays.get("cond_png_offsets")
    if offsets is None or len(offsets) - 1 <= view:
        return None
    return Image.fromarray(unpack_png(arrays["cond_png"], offsets, view))


def _composite(img: Image.Image, background) -> np.ndarray:
    x = np.asarray(img.convert("RGBA"), np.float32) / 255.0
    return x[..., :3] * x[..., 3:] + np.asarray(background, np.float32) * (1 - x[..., 3:])


def sample_assets(pipe, cond_model, kind: str, prompts: list, seeds: list[int]) -> list:
    """Sample one asset per prompt -> per prompt the host Gaussians dict, or a reason string on failure."""
    cond = cond_model(prompts)
    neg = cond_model.negative(cond.shape[0])
    out = pipe.sample(cond, neg, np.asarray(seeds), on_error="flag")
    counts = np.asarray(out["num_voxels"])
    results = []
    for b in range(len(prompts)):
        if not bool(out["ok"][b]):
            results.append("empty structure" if counts[b] == 0 else f"{int(counts[b])} voxels exceed the capacity {pipe.capacity}")
            continue
        g = out["gaussian"].sample(b)
        results.append(g if all(np.isfinite(v).all() for v in g.values()) else "NaN/Inf Gaussians")
    return results


def evaluate_samples(records: list, pipe, cond_model, kind: str, extractors, cfg, log=print) -> tuple[list[dict], dict, dict]:
    """records [(meta, arrays)] -> (per-asset rows, set-level metrics, images {id: {'ground_truth', 'sample'}})."""
    usable = []
    for meta, arrays in records:
        p = prompt_of(kind, meta, arrays, cfg.prompt_view)
        if p is None:
            log(f"{meta['id']}: no {'caption' if kind == 'text' else 'condition render'} -> not evaluated")
        else:
            usable.append((meta, arrays, p))
    rows, images, gt_feats, sample_feats, failed = [], {}, [], [], {}
    bs = max(1, int(cfg.batch_size))
    for start in range(0, len(usable), bs):
        chunk = usable[start : start + bs]
        seeds = [cfg.seed + start + i for i in range(len(chunk))]
        samples = sample_assets(pipe, cond_model, kind, [p for _, _, p in chunk], seeds)
        for (meta, arrays, prompt), seed, g in zip(chunk, seeds, samples):
            gt, ext, intr = ground_truth_views(arrays, cfg.num_views, cfg.resolution, cfg.background)
            gt_feats.append(extractors.dinov2_features(gt))
            if isinstance(g, str):
                failed[meta["id"]] = g
                log(f"{meta['id']}: sample NOT evaluated ({g})")
                continue
            ren = render_gaussian_views(g, ext, intr, cfg.resolution, tuple(cfg.background))
            ren_f = ren.astype(np.float32) / 255.0
            sample_feats.append(extractors.dinov2_features(ren_f))
            emb = extractors.clip_image(ren_f)
            if kind == "image":
                ref = extractors.clip_image(_composite(prompt, cfg.background)[None])
            else:
                ref = extractors.clip_texts(cond_model.tokenizer([prompt]))
            score = float(np.mean(metrics.clip_score(emb, np.broadcast_to(ref, emb.shape)))) if ref is not None else None
            rows.append({"id": meta["id"], "seed": seed, "prompt": prompt if kind == "text" else f"cond view {cfg.prompt_view}",
                         "views": len(ren), "clip_score": score})
            images[meta["id"]] = {"ground_truth": (gt * 255 + 0.5).astype(np.uint8), "sample": ren}
    summary = {"evaluated": len(rows), "failed": failed, "fd_dinov2": None, "kd_dinov2_x100": None}
    if len(sample_feats) and sum(len(f) for f in sample_feats) >= 2:
        x, y = np.concatenate(sample_feats), np.concatenate(gt_feats)
        summary["fd_dinov2"] = float(metrics.frechet_distance(x, y))
        summary["kd_dinov2_x100"] = 100.0 * float(metrics.kernel_distance(x, y))
        summary["num_features"] = [len(x), len(y)]
    return rows, summary, images
