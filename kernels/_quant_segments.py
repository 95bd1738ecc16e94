"""Generates the segment tables of kernels/_quant.h (run: python kernels/_quant_segments.py).

bitsandbytes' CPU code of a grid index i (fastgd.quant.grid_table) is a step function of i
with 255 steps. Cut [0, 65535] into runs where it is linear in i up to the floor:
``code = c + (int)(a * (i - L) + b)`` for every i of the run, with a margin of at least
MARGIN between a * (i - L) + b and the nearest integer it must not cross (so float32
rounding, fused or not, cannot change a code). tests/test_quant.py checks the C code against
the table for every one of the 65536 indices. The AVX-512 path uses the same runs' slopes on
one half of the grid (``mirrored``, below).
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


_SEGMENTS = {}


def segments(qmap):
    key = np.asarray(qmap, np.float32).tobytes()
    if key not in _SEGMENTS:
        _SEGMENTS[key] = _segments(qmap)
    return _SEGMENTS[key]


def _segments(qmap):
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


# --- the AVX-512 path: one side of the grid, buckets of half binades ------------------------
#
# Both tables are one-sided: the signed map's is mirror-symmetric, code(i) = 254 - code(65535 -
# i), saturated at 0 (the top codes, 255 = 1.0, have no negative twin), and the unsigned map's
# is 0 below the middle. So the vector path finds the code of a = |t - 32767.5| (t the grid
# index as a float, a in {0.5, 1.5, .., 32767.5}) on the upper half only, and mirrors it. Its
# bucket: the half binade of kf = RN(a * c + K) (K = c / 2: kf is c (a + 1/2), the same for i
# and its mirror 65535 - i, in [c, 32768 c]: 16 binades, 32 half binades, the exponent and first mantissa bit of kf, bits
# 22.. of its float, the low 5 of which a two-register permute reads). c is chosen so that no
# bucket holds more than one start of a piece past its first index: one compare a >= P[key].

MIRROR_C = np.linspace(1.0, 2.0, 401)[1:-1]      # the scales tried


def _half_side(qmap):
    table = Q.grid_table(qmap).astype(np.int64)
    starts = [s[0] for s in segments(qmap) if s[0] >= 32768]
    assert starts[0] == 32768
    return table, starts


def _bucket_keys(c):
    a = np.arange(32768, 65536, dtype=np.float64) - 32767.5   # exact: a c and the sum (41 bits)
    c = np.float32(c)
    K = np.float32(0.5 * np.float64(c))
    kf = (a * np.float64(c) + np.float64(K)).astype(np.float32)
    return c, K, (kf.view(np.uint32) >> 22) & 31


def _buckets_for(c, starts):
    """(c, K, S, P) when every bucket's indices are one run holding at most one piece start
    past its first index, else None."""
    c, K, key = _bucket_keys(c)
    idx = np.arange(32768, 65536)
    S = np.zeros(32, np.int64)
    P = np.full(32, 65536.0)                  # above every a: no second piece
    for k in range(32):
        m = idx[key == k]
        if m.size == 0:
            continue
        lo, hi = int(m.min()), int(m.max())
        if m.size != hi - lo + 1:
            return None
        inside = [s for s in starts if lo < s <= hi]
        if len(inside) > 1:
            return None
        S[k] = sum(1 for s in starts if s <= lo) - 1
        if inside:
            P[k] = inside[0] - 32767.5
    return c, K, S, P


def mirrored(qmap, signed):
    """The AVX-512 path's tables of one map: (c, K, S, P, A, B). The piece of a is S[key] + (a
    >= P[key]), its code trunc(RN(A * a + B)); c the middle of the widest run of good scales;
    B, per piece, the float nearest its line's offset that gives every index of the piece its
    code (checked: the sum exact in float64, one rounding, as the fused multiply-add)."""
    table, starts = _half_side(qmap)
    i = np.arange(32768)
    if signed:
        assert np.array_equal(table[i], np.maximum(254 - table[65535 - i], 0))
    else:
        assert not table[:32768].any()
    good = [c for c in MIRROR_C if _buckets_for(c, starts) is not None]
    runs, run = [], []
    for c in MIRROR_C:                               # the widest run of consecutive good scales
        if c in good:
            run.append(c)
        elif run:
            runs.append(run)
            run = []
    runs.append(run)
    best = max(runs, key=len)
    c, K, S, P = _buckets_for(best[len(best) // 2], starts)
    segs = {s[0]: s for s in segments(qmap)}
    A, B = [], []
    for j, L in enumerate(starts):
        R = starts[j + 1] - 1 if j + 1 < len(starts) else 65535
        _, code, a, b = segs[L]
        x = np.arange(L, R + 1, dtype=np.float64) - 32767.5
        ideal = np.float32(np.float64(code) + np.float64(b) - np.float64(a) * (L - 32767.5))
        up, down, tries = ideal, ideal, [ideal]
        for _ in range(64):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            tries += [up, down]
        for b2 in tries:
            y = (np.float64(a) * x + np.float64(b2)).astype(np.float32)
            if np.array_equal(np.trunc(y).astype(np.int64), table[L:R + 1]):
                break
        else:
            raise AssertionError(f"no offset for the piece at {L}")
        A.append(np.float32(a))
        B.append(b2)
    # the whole upper half, as the vector path computes it
    _, _, key = _bucket_keys(c)
    x = np.arange(32768, 65536, dtype=np.float64) - 32767.5
    s = S[key] + (x >= P[key])
    y = (np.asarray(A, np.float64)[s] * x + np.asarray(B, np.float64)[s]).astype(np.float32)
    assert np.array_equal(np.trunc(y).astype(np.int64), table[32768:])
    return c, K, S, P, A, B


def c_mirrored(name, qmap, signed):
    c, K, S, P, A, B = mirrored(qmap, signed)
    low = name.lower()

    def row(field, typ, fmt, col):
        col = list(col) + [col[-1]] * (32 - len(col))
        return (f"static const {typ} fgd_q8_{low}_m{field}[32] __attribute__((aligned(64))) = "
                f"{{{', '.join(fmt % v for v in col)}}};")
    return "\n".join([
        f"#define FGD_Q8_{name}_MC {float(c).hex()}f",
        f"#define FGD_Q8_{name}_MK {float(K).hex()}f",
        row("S", "int32_t", "%d", [int(v) for v in S]),
        row("P", "float", "%.9ef", [float(v) for v in P]),
        row("A", "float", "%.9ef", [float(v) for v in A]),
        row("B", "float", "%.9ef", [float(v) for v in B]),
        row("E", "int32_t", "%d", [int(v) for v in mirrored_entries(S, P)])])


def mirrored_entries(S, P):
    """S and P of each bucket in one int32 (one permute where two took two): the bits of P less
    16, plus S + 1 (1..15) in the low 4 bits. a = |t - 32767.5| and every P are half-integers
    below 2^16 (or 65536), so the low 8 bits of their float bits are 0, and a >= P exactly when
    a's bits >= E; the piece is (E & 15) - 1 + (a >= P)."""
    bits = np.asarray(P, np.float32).view(np.int32).astype(np.int64)
    assert not (bits & 255).any() and (np.asarray(S) + 1 <= 15).all()
    return bits - 16 + np.asarray(S) + 1


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
        c_mirrored("SIGNED", Q.SIGNED8, True), c_mirrored("UNSIGNED", Q.UNSIGNED8, False),
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
