"""Matmul / convolution FLOPs of a traced JAX function, with loop trip counts.

XLA's cost analysis (`compiled.cost_analysis()`) counts the body of every while loop once, so for a
step with `lax.scan` / `lax.map` inside (chunked attention, micro-batches, the sampler's Euler steps)
its `flops` and `optimal_seconds` cover a fraction of the work. This walks the jaxpr instead:

    counts = count_flops(jax.jit(fn).trace(*args).jaxpr)   # args may be ShapeDtypeStructs
    counts.flops                         # dot_general + conv FLOPs, scans x their length
    counts.flops_once                    # the same with every loop body counted once (XLA's view)

Conditionals (`lax.cond` / `lax.switch`) count their most expensive branch (worst case, as XLA does);
`while_loop`s without a static trip count count once (`counts.unknown_loops` says how many).
Pallas kernels count the `cost_estimate` they declare (`counts.opaque_kernels`: those without one).
"""
from __future__ import annotations

import dataclasses
import math

from jax.extend import core as jcore


@dataclasses.dataclass
class FlopCounts:
    flops: float = 0.0
    flops_once: float = 0.0
    unknown_loops: int = 0
    opaque_kernels: int = 0

    @property
    def loop_factor(self) -> float:
        """flops / flops_once: how much more work the loops do than XLA's once-per-body count."""
        return self.flops / self.flops_once if self.flops_once else 1.0


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    (_, rc), (_, rb) = eqn.params["dimension_numbers"]
    free_rhs = math.prod(d for i, d in enumerate(rhs.shape) if i not in set(rc) | set(rb))
    return 2.0 * math.prod(lhs.shape) * free_rhs


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return 2.0 * math.prod(out.shape) * math.prod(rhs.shape) / rhs.shape[out_feature_dim]


def _sub_jaxprs(value):
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _count(jaxpr, totals: FlopCounts) -> tuple[float, float]:
    """(flops with trip counts, flops with bodies once) of one jaxpr; loop/kernel flags go to totals."""
    full = once = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            f = _dot_flops(eqn)
            full, once = full + f, once + f
        elif name == "conv_general_dilated":
            f = _conv_flops(eqn)
            full, once = full + f, once + f
        elif name == "pallas_call":
            est = eqn.params.get("cost_estimate")
            f = float(getattr(est, "flops", 0) or 0)
            totals.opaque_kernels += est is None
            full, once = full + f, once + f
        elif name == "cond":
            branches = [_count(b.jaxpr, totals) for b in eqn.params["branches"]]
            full += max(b[0] for b in branches)
            once += max(b[1] for b in branches)
        else:
            subs = [_count(j, totals) for v in eqn.params.values() for j in _sub_jaxprs(v)]
            f, o = sum(s[0] for s in subs), sum(s[1] for s in subs)
            if name == "scan":
                f *= int(eqn.params["length"])
            elif name == "while":
                totals.unknown_loops += 1
            full, once = full + f, once + o
    return full, once


def count_flops(closed: jcore.ClosedJaxpr) -> FlopCounts:
    """FLOPs of a traced function (`jax.jit(f).trace(*args).jaxpr`, args may be ShapeDtypeStructs)."""
    totals = FlopCounts()
    totals.flops, totals.flops_once = _count(closed.jaxpr, totals)
    return totals
