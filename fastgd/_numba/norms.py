"""Norm partials, scale, clamp and accumulate in Numba: the twins of kernels/norms.pyx.

The norm is summed in the same fixed order as the Cython kernel (blocks of BLOCK elements, each
in LANES float64 lanes combined by a fixed tree, block sums added in block order), so the result
does not depend on the thread count, and for float32 with p in {1, 2, inf} it is bitwise equal
to the Cython backend's.
"""
import numba
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, serial_and_parallel

BLOCK = 4096
LANES = 16
KIND_SQ, KIND_ABS, KIND_POW, KIND_MAX = 0, 1, 2, 3


@njit(inline="always", **_OPTIONS)
def _block(x, y, lo, hi, use_y, kind, p, lanes):
    """Partial of x[lo:hi] (+ y): sum of f in LANES lanes (lane j: index % LANES == j), or max."""
    if kind == KIND_MAX:
        m = 0.0
        bad = False
        for i in range(lo, hi):
            a = abs(np.float64(x[i] + y[i] if use_y else x[i]))
            if a > m:
                m = a
            bad |= a != a
        return np.nan if bad else m
    for j in range(LANES):
        lanes[j] = 0.0
    nfull = hi - (hi - lo) % LANES
    for c in range(lo, nfull, LANES):
        for j in range(LANES):
            a = np.float64(x[c + j] + y[c + j] if use_y else x[c + j])
            if kind == KIND_SQ:
                lanes[j] += a * a
            elif kind == KIND_ABS:
                lanes[j] += abs(a)
            else:
                lanes[j] += abs(a) ** p
    for i in range(nfull, hi):
        a = np.float64(x[i] + y[i] if use_y else x[i])
        j = i - nfull
        if kind == KIND_SQ:
            lanes[j] += a * a
        elif kind == KIND_ABS:
            lanes[j] += abs(a)
        else:
            lanes[j] += abs(a) ** p
    for j in range(8):
        lanes[j] = lanes[j] + lanes[j + 8]
    for j in range(4):
        lanes[j] = lanes[j] + lanes[j + 4]
    return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])


def _norm_partial(x, y, use_y, norm_type, nthreads):
    """sum |v|^p over v = x (+ y if use_y), or max |v| for p = inf; float64, deterministic.

    nthreads only decides which thread sums which block, never the order of the sum.
    """
    n = x.shape[0]
    if norm_type == np.inf:
        kind = KIND_MAX
    elif norm_type == 2.0:
        kind = KIND_SQ
    elif norm_type == 1.0:
        kind = KIND_ABS
    else:
        kind = KIND_POW
    nb = (n + BLOCK - 1) // BLOCK
    blocks = np.empty(nb)
    nt = max(1, min(nb, nthreads))
    for t in prange(nt):
        lanes = np.empty(LANES)
        for b in range(t * nb // nt, (t + 1) * nb // nt):
            blocks[b] = _block(x, y, b * BLOCK, min(n, (b + 1) * BLOCK), use_y, kind, norm_type, lanes)
    total = 0.0
    for b in range(nb):
        s = blocks[b]
        if kind == KIND_MAX:
            if s != s:
                return np.nan
            if s > total:
                total = s
        else:
            total += s
    return total


def _scale(x, s):
    """x *= s in place."""
    real = x.dtype.type
    c = real(s)
    for i in prange(x.shape[0]):
        x[i] = x[i] * c


def _clamp(x, lo, hi):
    """x = min(max(x, lo), hi) in place; NaN stays NaN."""
    real = x.dtype.type
    a = real(lo)
    b = real(hi)
    for i in prange(x.shape[0]):
        v = x[i]
        v = a if v < a else v
        x[i] = b if v > b else v


def _accumulate(acc, grad, scale):
    """acc += scale * grad in place."""
    real = acc.dtype.type
    c = real(scale)
    for i in prange(acc.shape[0]):
        acc[i] = acc[i] + c * grad[i]


_norm_partial_compiled = serial_and_parallel(_norm_partial)


def norm_partial(x, y, use_y, norm_type):
    """sum |v|^p over v = x (+ y if use_y), or max |v| for p = inf; float64, deterministic."""
    if not (norm_type > 0):
        raise ValueError(f"norm_type must be > 0 or inf; got {norm_type}")
    if x.shape[0] == 0:
        return 0.0
    return _norm_partial_compiled(x, y, bool(use_y), float(norm_type), numba.get_num_threads())


scale = serial_and_parallel(_scale)
clamp = serial_and_parallel(_clamp)
accumulate = serial_and_parallel(_accumulate)
