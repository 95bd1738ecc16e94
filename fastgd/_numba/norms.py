"""Norm partials, scale, clamp and accumulate in Numba: the twins of kernels/norms.pyx.

The norm is summed in the same fixed order as the Cython kernel (blocks of BLOCK elements, each
in LANES float64 lanes combined by a fixed tree, block sums added in block order), so the result
does not depend on the thread count, and for float32 with p in {1, 2, inf} it is bitwise equal
to the Cython backend's. It is walked as the Cython kernel walks it: a thread sums its full
blocks four at a time from four runs (four read streams in flight), the lanes vectorised by
LLVM's loop vectoriser (Numba leaves the SLP vectoriser off, so the lane loop must survive as a
loop: see _sum_4_blocks). No software prefetch here: measured, it gained nothing in Numba.
"""
import numba
import numpy as np
from numba import njit, prange

from ._compile import _OPTIONS, _stale_with_package, serial_and_parallel

BLOCK = 4096
LANES = 16
KIND_SQ, KIND_ABS, KIND_POW, KIND_MAX = 0, 1, 2, 3


@njit(inline="always", **_OPTIONS)
def _term(x, y, i, square, use_y):
    """|v|^2 or |v| of v = x[i] (+ y[i]), widened to float64. Called with literal flags: once
    inlined, LLVM folds the branches, and the loops below have none."""
    a = np.float64(x[i] + y[i]) if use_y else np.float64(x[i])   # x + y in the element type
    return a * a if square else abs(a)


@njit(inline="always", **_OPTIONS)
def _tree(lanes, o):
    """The fixed combination of lanes[o:o + 16] (the same tree as fgd_tree in kernels/_lanes.h)."""
    s0 = lanes[o] + lanes[o + 8]
    s1 = lanes[o + 1] + lanes[o + 9]
    s2 = lanes[o + 2] + lanes[o + 10]
    s3 = lanes[o + 3] + lanes[o + 11]
    s4 = lanes[o + 4] + lanes[o + 12]
    s5 = lanes[o + 5] + lanes[o + 13]
    s6 = lanes[o + 6] + lanes[o + 14]
    s7 = lanes[o + 7] + lanes[o + 15]
    s0 = s0 + s4
    s1 = s1 + s5
    s2 = s2 + s6
    s3 = s3 + s7
    return (s0 + s2) + (s1 + s3)


@njit(inline="always", **_OPTIONS)
def _sum_block(x, y, lanes, square, use_y):
    """sum of _term over one block x (+ y), n <= BLOCK elements, in the LANES lanes.

    x and y are views starting at the block: indices from 0 let LLVM drop the negative-index
    wraparound, which otherwise blocks vectorisation."""
    n = x.shape[0]
    for j in range(LANES):
        lanes[j] = 0.0
    nfull = n - n % LANES
    for r in range(0, nfull, LANES):
        for j in range(LANES):
            lanes[j] += _term(x, y, r + j, square, use_y)
    for i in range(nfull, n):
        lanes[i - nfull] += _term(x, y, i, square, use_y)
    return _tree(lanes, 0)


@njit(inline="always", **_OPTIONS)
def _sum_4_blocks(x0, x1, x2, x3, y0, y1, y2, y3, lanes, square, use_y):
    """Four full blocks summed side by side into lanes[16k:16k + 16] (k = 0..3): four read
    streams in flight instead of one (the kernels/_lanes.h walk, fgd_sum*_range). Each block's
    lanes are filled in _sum_block's order. Four rows per pass over the lanes keep LLVM from
    unrolling the lane loop before it vectorises it."""
    for j in range(4 * LANES):
        lanes[j] = 0.0
    for r in range(0, BLOCK, 4 * LANES):
        for j in range(LANES):
            for i in (r + j, r + LANES + j, r + 2 * LANES + j, r + 3 * LANES + j):
                lanes[j] += _term(x0, y0, i, square, use_y)
                lanes[LANES + j] += _term(x1, y1, i, square, use_y)
                lanes[2 * LANES + j] += _term(x2, y2, i, square, use_y)
                lanes[3 * LANES + j] += _term(x3, y3, i, square, use_y)


def _range_summer(square, use_y):
    """_sum_range for one choice of the flags, compiled on its own.

    The flags are closure variables, which Numba freezes as constants: the element loops are
    branch-free without inlining four copies of this body into the parallel kernel (that made
    the first call compile for ~100 s instead of a few)."""
    def sum_range(x, y, b0, b1, blocks, lanes):
        """Blocks [b0, b1) into blocks[]: the full ones four at a time from four equal runs,
        the rest (fewer than four, and a partial last block) one at a time."""
        n = x.shape[0]
        full = min(b1, n // BLOCK)
        per = (full - b0) // 4 if full > b0 else 0
        for j in range(per):
            o0 = (b0 + j) * BLOCK
            o1 = o0 + per * BLOCK
            o2 = o1 + per * BLOCK
            o3 = o2 + per * BLOCK
            _sum_4_blocks(x[o0:o0 + BLOCK], x[o1:o1 + BLOCK], x[o2:o2 + BLOCK],
                          x[o3:o3 + BLOCK], y[o0:o0 + BLOCK], y[o1:o1 + BLOCK],
                          y[o2:o2 + BLOCK], y[o3:o3 + BLOCK], lanes, square, use_y)
            for k in range(4):
                blocks[b0 + k * per + j] = _tree(lanes, LANES * k)
        for b in range(b0 + 4 * per, b1):
            lo = b * BLOCK
            hi = min(n, lo + BLOCK)
            blocks[b] = _sum_block(x[lo:hi], y[lo:hi], lanes, square, use_y)

    # Numba's disk cache is keyed by qualified name: one name per flag choice.
    sum_range.__qualname__ = sum_range.__name__ = (
        f"_sum_range_{'sq' if square else 'abs'}{'_xy' if use_y else ''}")
    return _stale_with_package(njit(**_OPTIONS)(sum_range))


_sumsq_range, _sumsq_range_xy = _range_summer(True, False), _range_summer(True, True)
_sumabs_range, _sumabs_range_xy = _range_summer(False, False), _range_summer(False, True)


@njit(**_OPTIONS)
def _sum_pow_block(x, y, use_y, p):
    """sum |v|^p over one block in the LANES lanes (scalar: pow does not vectorise, and a p
    other than 1, 2, inf is rare)."""
    lanes = np.zeros(LANES)
    for i in range(x.shape[0]):
        a = np.float64(x[i] + y[i] if use_y else x[i])
        lanes[i % LANES] += abs(a) ** p
    return _tree(lanes, 0)


@njit(**_OPTIONS)
def _max_block(x, y, use_y):
    """max |v| over one block; NaN if any is NaN (max is exact: any order gives the same)."""
    m = 0.0
    bad = False
    for i in range(x.shape[0]):
        a = abs(np.float64(x[i] + y[i] if use_y else x[i]))
        if a > m:
            m = a
        bad |= a != a
    return np.nan if bad else m


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
        # Thread t takes the blocks [t*nb/T, (t+1)*nb/T): contiguous memory, and the same block
        # boundaries whatever T is.
        b0 = t * nb // nt
        b1 = (t + 1) * nb // nt
        lanes = np.empty(4 * LANES)
        if kind == KIND_SQ and use_y:
            _sumsq_range_xy(x, y, b0, b1, blocks, lanes)
        elif kind == KIND_SQ:
            _sumsq_range(x, y, b0, b1, blocks, lanes)
        elif kind == KIND_ABS and use_y:
            _sumabs_range_xy(x, y, b0, b1, blocks, lanes)
        elif kind == KIND_ABS:
            _sumabs_range(x, y, b0, b1, blocks, lanes)
        else:
            for b in range(b0, b1):
                lo = b * BLOCK
                hi = min(n, lo + BLOCK)
                if kind == KIND_MAX:
                    blocks[b] = _max_block(x[lo:hi], y[lo:hi], use_y)
                else:
                    blocks[b] = _sum_pow_block(x[lo:hi], y[lo:hi], use_y, norm_type)
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
