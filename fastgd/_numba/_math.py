"""Elementwise maths shared by the Numba kernels: the twin of kernels/_math.pxd.

``inline="always"`` inlines them into the caller's Numba IR before the prange loop is built: a
call Numba does not inline would sit in the loop as an opaque call and keep LLVM from
vectorising it. Inlined IR is still a few blocks more than the lines written in place, which can
push a loop with several runtime flags past LLVM's unswitching budget and leave it scalar
(NAdam's and RAdam's serial loops with both helpers): count vector instructions in
``kernel.compiled.loops[flags, parallel].inspect_asm()`` (fastgd/_numba/_single.py) when a loop
starts using one. Numba's on-disk cache checks a kernel against its own file only; _compile widens
that check to every module of this package (_compile._stale_with_package), so an edit here
recompiles the kernels that inline these helpers.
"""
from numba import njit

from ._compile import _OPTIONS


@njit(inline="always", **_OPTIONS)
def _grad(grad, grad_acc, i, gs, use_acc):
    """The gradient a rule sees at i: gs * grad[i], or with use_acc gs * (grad_acc[i] + grad[i])
    and grad_acc[i] = 0 (the last micro-batch of gradient accumulation fused into the step)."""
    if use_acc:
        gi = (grad_acc[i] + grad[i]) * gs
        grad_acc[i] = 0
    else:
        gi = grad[i] * gs
    return gi


@njit(inline="always", **_OPTIONS)
def _adam_moments(exp_avg, exp_avg_sq, i, gi, omb1, b2, omb2):
    """Adam's moments at i (Adam, NAdam, RAdam): m += (1 - b1) * (g - m), v = b2 * v + (1 - b2) * g * g.

    Stores both and returns them (m, v)."""
    mi = exp_avg[i] + omb1 * (gi - exp_avg[i])
    vi = b2 * exp_avg_sq[i] + omb2 * gi * gi
    exp_avg[i] = mi
    exp_avg_sq[i] = vi
    return mi, vi
