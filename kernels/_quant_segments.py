"""Generates the segment tables of kernels/_quant.h (run: python kernels/_quant_segments.py).

bitsandbytes' CPU code of a grid index i (fastgd.quant.grid_table) is a step function of i
with 255 steps. Cut [0, 65535] into runs where it is linear in i up to the floor:
``code = c + (int)(a * (i - L) + b)`` for every i of the run, with a margin of at least
MARGIN between a * (i - L) + b and the nearest integer it must not cross (so float32
rounding, fused or not, cannot change a code). tests/test_quant.py checks the C code against
the table for every one of the 65536 indices. The AVX-512 path evaluates each run's line as
``(int)fma(a, i - 32768, B2)`` (``centred``: B2 checked here for every index of the run).
"""
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/kernels/", 1)[0])
from fastgd import quant as Q  # noqa: E402

MARGIN = 2e-5


def _margin(a, t, m, span):
    # thresholds t (1..m-th, relative to L, >= 1): a*t + b >= q, a*(t-1) + b < q; b >= 0 at
    # i = L; a*span + b < m + 1 at the run's end. The best b and its margin for slope a.
    q = np.arange(1, m + 1)
    lo = max([0.0] + list(q - a * t))
    hi = min([1.0] + list(q - a * (t - 1)) + [m + 1 - a * span])
    return (hi - lo) / 2, (lo + hi) / 2


def fit(t, span):
    m = len(t)
    if m == 0:
        return 0.0, 0.5, 0.5
    lo_a, hi_a = 0.0, 16.0
    for _ in range(100):
        m1, m2 = lo_a + (hi_a - lo_a) / 3, hi_a - (hi_a - lo_a) / 3
        if _margin(m1, t, m, span)[0] < _margin(m2, t, m, span)[0]:
            lo_a = m1
        else:
            hi_a = m2
    a = (lo_a + hi_a) / 2
    g, b = _margin(a, t, m, span)
    return a, b, g


def segments(qmap):
    table = Q.grid_table(qmap).astype(np.int64)
    T = np.repeat(np.arange(1, Q.GRID), np.diff(table))   # index of each step, repeated by jump
    segs, L, k = [], 0, 0
    while L < Q.GRID:
        while k < len(T) and T[k] <= L:       # steps at L are in c = table[L]
            k += 1
        best = None
        j = k
        while True:
            R = (T[j] - 1) if j < len(T) else Q.GRID - 1
            if R >= L:
                a, b, g = fit(T[k:j] - L, R - L)
                if g < MARGIN:
                    break
                best = (j, R, a, b)
            if j == len(T):
                break
            j += 1
        j, R, a, b = best
        segs.append((L, int(table[L]), np.float32(a), np.float32(b)))
        L, k = R + 1, j
    return segs


def c_table(name, qmap):
    segs = segments(qmap)
    rows = [f"#define FGD_Q8_{name}_NSEG {len(segs)}"]
    for field, fmt in (("L", "%d"), ("C", "%d"), ("A", "%.9ef"), ("B", "%.9ef")):
        col = [s["LCAB".index(field)] for s in segs]
        col += [col[-1]] * (32 - len(col))         # 32 entries: the permutes' tables
        typ = {"L": "int32_t", "C": "int32_t", "A": "float", "B": "float"}[field]
        vals = ", ".join(fmt % v for v in col)
        rows.append(f"static const {typ} fgd_q8_{name.lower()}_{field}[32] "
                    f"__attribute__((aligned(64))) = {{{vals}}};")
    return "\n".join(rows)


def centred(qmap):
    """The AVX-512 path's form of the pieces: code = (int)fma(A, i - 32768, B2), one rounding
    (no L and C to look up). B2 is the float nearest c + b - A (L - 32768), or the nearest one
    that gives every index of the piece its code, checked here for all 65536 (the exact sum in
    float64, one rounding to float32: what the fused multiply-add computes)."""
    table = Q.grid_table(qmap).astype(np.int64)
    segs = segments(qmap)
    out = []
    for j, (L, c, a, b) in enumerate(segs):
        R = segs[j + 1][0] - 1 if j + 1 < len(segs) else Q.GRID - 1
        t = np.arange(L, R + 1, dtype=np.float64) - 32768
        ideal = np.float32(np.float64(c) + np.float64(b) - np.float64(a) * (L - 32768))
        up, down, tries = ideal, ideal, [ideal]
        for _ in range(64):      # then 1, 2, ... ulps either side
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            tries += [up, down]
        for B2 in tries:
            y = (np.float64(a) * t + np.float64(B2)).astype(np.float32)
            if np.array_equal(np.trunc(y).astype(np.int64), table[L:R + 1]):
                break
        else:
            raise AssertionError(f"no offset for the piece at {L}")
        out.append(B2)
    return out


def c_centred(name, qmap):
    col = centred(qmap)
    col += [col[-1]] * (32 - len(col))
    vals = ", ".join("%.9ef" % v for v in col)
    return (f"static const float fgd_q8_{name.lower()}_B2[32] __attribute__((aligned(64))) = "
            f"{{{vals}}};")


def buckets(qmap):
    """The AVX-512 path's two-level choice of a piece: bucket key = 16 * (i >= 32768) +
    floor(log2 |2i - 65535|) (32 keys, one two-register permute); S[key] the piece of the
    bucket's first index, and the starts of the K pieces that begin inside the bucket
    (65536 when fewer), so piece = S[key] + #{k : i >= P[k][key]}."""
    segs = segments(qmap)
    starts = np.array([s[0] for s in segs[1:]])
    i = np.arange(Q.GRID)
    r = np.abs(2 * i - 65535)
    key = 16 * (i >= 32768) + np.floor(np.log2(r)).astype(np.int64)
    S = np.zeros(32, np.int64)
    inside = [[] for _ in range(32)]
    for k in range(32):
        idx = i[key == k]
        if idx.size == 0:
            continue
        lo, hi = idx.min(), idx.max()
        S[k] = np.searchsorted(starts, lo, side="right")
        inside[k] = [int(t) for t in starts if lo < t <= hi]
    K = max(len(b) for b in inside)
    P = np.full((K, 32), Q.GRID, np.int64)
    for k, b in enumerate(inside):
        P[:len(b), k] = b
    assert len(segs) <= 32
    return S, P


def c_buckets(name, qmap):
    S, P = buckets(qmap)
    low = name.lower()
    rows = [f"#define FGD_Q8_{name}_NB {P.shape[0]}",
            f"static const int32_t fgd_q8_{low}_S[32] __attribute__((aligned(64))) = "
            f"{{{', '.join(str(v) for v in S)}}};",
            f"static const int32_t fgd_q8_{low}_P[{P.shape[0]}][32] __attribute__((aligned(64))) = {{"
            + ", ".join("{" + ", ".join(str(v) for v in row) + "}" for row in P) + "};"]
    return "\n".join(rows)


def c_floats(name, values):
    vals = ", ".join(float(v).hex() + "f" for v in np.asarray(values, dtype=np.float32))
    return f"static const float {name}[{len(values)}] = {{{vals}}};"


def c_planes(name, values):
    """The 4 byte planes of a float32 map, plane j holding byte j (little endian) of every value:
    the AVX-512 VBMI dequantize looks 64 codes up in each with byte permutes."""
    b = np.ascontiguousarray(values, dtype=np.float32).view(np.uint8).reshape(-1, 4).T
    rows = ", ".join("{" + ", ".join(str(int(v)) for v in row) + "}" for row in b)
    return f"static const uint8_t {name}[4][{b.shape[1]}] __attribute__((aligned(64))) = {{{rows}}};"


def generated():
    """The generated part of kernels/_quant.h (between its BEGIN/END GENERATED lines)."""
    return "\n".join([
        c_table("SIGNED", Q.SIGNED8), c_table("UNSIGNED", Q.UNSIGNED8),
        c_buckets("SIGNED", Q.SIGNED8), c_buckets("UNSIGNED", Q.UNSIGNED8),
        c_centred("SIGNED", Q.SIGNED8), c_centred("UNSIGNED", Q.UNSIGNED8),
        c_floats("fgd_q8_signed_map", Q.SIGNED8), c_floats("fgd_q8_unsigned_map", Q.UNSIGNED8),
        c_planes("fgd_q8_signed_planes", Q.SIGNED8), c_planes("fgd_q8_unsigned_planes", Q.UNSIGNED8),
        c_floats("fgd_q4_signed_map", Q.SIGNED4), c_floats("fgd_q4_unsigned_map", Q.UNSIGNED4),
        c_floats("fgd_q4_signed_mid", Q.midpoints(Q.SIGNED4)),
        c_floats("fgd_q4_unsigned_mid", Q.midpoints(Q.UNSIGNED4)),
        # the midpoints in one 16-float register (the AVX-512 binary search; the 16th never probed)
        c_floats("fgd_q4_signed_mid16", np.r_[Q.midpoints(Q.SIGNED4), np.float32(1)]),
        c_floats("fgd_q4_unsigned_mid16", np.r_[Q.midpoints(Q.UNSIGNED4), np.float32(1)]),
    ])


if __name__ == "__main__":
    print(generated())
