/* Block reductions of kernels/norms.pyx in C (the sums in plain loops over the 16 lanes, the
 * max in GCC/Clang vector extensions; both portable: the compiler lowers them to whatever SIMD
 * the target has, or to scalars).
 *
 * Written in C because gcc, given the same loop in Cython, vectorised the wrong loop (strided
 * loads over blocks) and ran at a third of the speed. The summation order is exactly that of
 * the definition in norms.pyx / fastgd/_numba/norms.py: 16 float64 lanes, lane j takes the
 * elements i % 16 == j of the block in order; the lanes are combined by the same fixed tree.
 * float32 is widened to float64 before it is squared (exact), so these are bitwise equal to the
 * Numba twin for float32.
 */
#ifndef FASTGD_LANES_H
#define FASTGD_LANES_H

#include <math.h>
#include <string.h>
#include <stddef.h>

/* All functions here are static inline in one translation unit: the ABI note gcc gives for
 * 32-byte vectors in a portable (non-AVX) build does not apply. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef double fgd_v4d __attribute__((vector_size(32)));
typedef float fgd_v4f __attribute__((vector_size(16)));
typedef long long fgd_v4l __attribute__((vector_size(32)));

static inline fgd_v4d fgd_ld_f32(const float* x) {
    fgd_v4f f; memcpy(&f, x, sizeof f); return __builtin_convertvector(f, fgd_v4d);
}
static inline fgd_v4d fgd_ld2_f32(const float* x, const float* y) {
    fgd_v4f f, g; memcpy(&f, x, sizeof f); memcpy(&g, y, sizeof g);
    return __builtin_convertvector(f + g, fgd_v4d);   /* x + y in float32, as the update kernels */
}
static inline fgd_v4d fgd_ld_f64(const double* x) {
    fgd_v4d d; memcpy(&d, x, sizeof d); return d;
}
static inline fgd_v4d fgd_ld2_f64(const double* x, const double* y) {
    fgd_v4d d, e; memcpy(&d, x, sizeof d); memcpy(&e, y, sizeof e); return d + e;
}
static inline fgd_v4d fgd_abs(fgd_v4d v) {
    const fgd_v4l mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL, 0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
    return (fgd_v4d)((fgd_v4l)v & mask);
}

/* The fixed combination of the 16 lanes: (l[j] + l[j+8]), then (s[j] + s[j+4]), then
 * (s0 + s2) + (s1 + s3). */
static inline double fgd_tree(const double* l) {
    double s[8];
    int j;
    for (j = 0; j < 8; j++) s[j] = l[j] + l[j + 8];
    for (j = 0; j < 4; j++) s[j] = s[j] + s[j + 4];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

/* The element terms of the sums: the lane value plus |a|^2 or |a|. */
#define FGD_SQ(l, a) ((l) + (a) * (a))
#define FGD_ABS(l, a) ((l) + fabs(a))

/* Rows of 16 elements at x (+ y) from row offset r into the 16 lanes l: plain loops over the
 * lanes, which gcc vectorises across the lanes (4 float64 per AVX2 register) without any
 * reassociation; the lanes live in a small local array. T the element type, OP FGD_SQ/FGD_ABS. */
#define FGD_ROW(T, OP, l, x, y, r, use_y)                                                         \
    do {                                                                                          \
        int j_;                                                                                   \
        if (use_y) {                                                                              \
            for (j_ = 0; j_ < 16; j_++) {                                                         \
                double a_ = (double)(T)((x)[(r) + j_] + (y)[(r) + j_]);                           \
                (l)[j_] = OP((l)[j_], a_);                                                        \
            }                                                                                     \
        } else {                                                                                  \
            for (j_ = 0; j_ < 16; j_++) {                                                         \
                double a_ = (double)(x)[(r) + j_];                                                \
                (l)[j_] = OP((l)[j_], a_);                                                        \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/* sum over a block (n <= FGD_BLOCK elements) of OP(x[i] (+ y[i])); the tail elements after the
 * last full row go to lanes 0, 1, ... in order, as the definition says. */
#define FGD_SUM_BLOCK(NAME, T, OP)                                                                \
static inline double NAME(const T* x, const T* y, ptrdiff_t n, int use_y) {                      \
    double l[16] = {0};                                                                           \
    ptrdiff_t i, r, nfull = n - n % 16;                                                           \
    for (r = 0; r < nfull; r += 16)                                                               \
        FGD_ROW(T, OP, l, x, y, r, use_y);                                                        \
    for (i = nfull; i < n; i++) {                                                                 \
        double a = use_y ? (double)(T)(x[i] + y[i]) : (double)x[i];                              \
        l[i - nfull] = OP(l[i - nfull], a);                                                       \
    }                                                                                             \
    return fgd_tree(l);                                                                           \
}

FGD_SUM_BLOCK(fgd_sumsq_f32, float, FGD_SQ)
FGD_SUM_BLOCK(fgd_sumsq_f64, double, FGD_SQ)
FGD_SUM_BLOCK(fgd_sumabs_f32, float, FGD_ABS)
FGD_SUM_BLOCK(fgd_sumabs_f64, double, FGD_ABS)

/* max |x[i] (+ y[i])| over a block; NaN if any is NaN. Max is exact, so any order gives the
 * same result; four independent vectors keep the compare-and-select chains short. */
static inline fgd_v4d fgd_vmax(fgd_v4d m, fgd_v4d v, fgd_v4l* nan) {
    fgd_v4l gt = v > m;
    *nan |= (v != v);
    return (fgd_v4d)((gt & (fgd_v4l)v) | (~gt & (fgd_v4l)m));
}

#define FGD_MAX_BLOCK(NAME, T, SUF)                                                               \
static inline double NAME(const T* x, const T* y, ptrdiff_t n, int use_y) {                      \
    fgd_v4d m0 = {0, 0, 0, 0}, m1 = m0, m2 = m0, m3 = m0;                                       \
    fgd_v4l nan = {0, 0, 0, 0};                                                                   \
    double l[16], best = 0, a;                                                                    \
    long long bad[4];                                                                             \
    ptrdiff_t i, nfull = n - n % 16;                                                              \
    int j, nans = 0;                                                                              \
    if (use_y) {                                                                                  \
        for (i = 0; i < nfull; i += 16) {                                                         \
            m0 = fgd_vmax(m0, fgd_abs(fgd_ld2_##SUF(x + i, y + i)), &nan);                        \
            m1 = fgd_vmax(m1, fgd_abs(fgd_ld2_##SUF(x + i + 4, y + i + 4)), &nan);                \
            m2 = fgd_vmax(m2, fgd_abs(fgd_ld2_##SUF(x + i + 8, y + i + 8)), &nan);                \
            m3 = fgd_vmax(m3, fgd_abs(fgd_ld2_##SUF(x + i + 12, y + i + 12)), &nan);              \
        }                                                                                         \
    } else {                                                                                      \
        for (i = 0; i < nfull; i += 16) {                                                         \
            m0 = fgd_vmax(m0, fgd_abs(fgd_ld_##SUF(x + i)), &nan);                                \
            m1 = fgd_vmax(m1, fgd_abs(fgd_ld_##SUF(x + i + 4)), &nan);                            \
            m2 = fgd_vmax(m2, fgd_abs(fgd_ld_##SUF(x + i + 8)), &nan);                            \
            m3 = fgd_vmax(m3, fgd_abs(fgd_ld_##SUF(x + i + 12)), &nan);                           \
        }                                                                                         \
    }                                                                                             \
    memcpy(l, &m0, 32); memcpy(l + 4, &m1, 32); memcpy(l + 8, &m2, 32); memcpy(l + 12, &m3, 32); \
    memcpy(bad, &nan, 32);                                                                        \
    for (j = 0; j < 16; j++) best = l[j] > best ? l[j] : best;                                    \
    for (j = 0; j < 4; j++) nans |= bad[j] != 0;                                                  \
    for (i = nfull; i < n; i++) {                                                                 \
        T t = use_y ? (T)(x[i] + y[i]) : x[i];                                                    \
        a = fabs((double)t);                                                                      \
        best = a > best ? a : best;                                                               \
        nans |= a != a;                                                                           \
    }                                                                                             \
    return nans ? NAN : best;                                                                     \
}

FGD_MAX_BLOCK(fgd_maxabs_f32, float, f32)
FGD_MAX_BLOCK(fgd_maxabs_f64, double, f64)

/* A thread's run of full blocks, summed as FGD_STREAMS interleaved sequential streams.
 *
 * One sequential read stream per core is latency-bound (measured: a read-only pass ran at
 * ~15 GB/s on 2 Zen3 cores where read-write streams reach ~35 GB/s): too few cache misses are in
 * flight. So the thread's blocks [b0, b1) are cut into FGD_STREAMS equal runs and the j-th
 * block of every run is summed in the same loop, loads interleaved, each float32 stream
 * prefetched FGD_PREFETCH bytes ahead (measured on Zen3: +10-20% over the hardware prefetcher
 * alone, to 0.90-0.98 of a same-run read-only float stream; 256-512 were best, 2048 worse
 * than none).
 * Each block still has its own 16 lanes, filled in exactly FGD_SUM_BLOCK's order, and its sum
 * goes to blocks[b]: the per-block results, and so the norm (blocks are added in block order by
 * the caller), do not depend on the walk or the thread count. Blocks left over (fewer than
 * FGD_STREAMS, and a partial last block) are summed one at a time by FGD_SUM_BLOCK. */
#define FGD_BLOCK 4096      /* = BLOCK in norms.pyx: the unit of the summation order */
#define FGD_STREAMS 4
#ifndef FGD_PREFETCH
#define FGD_PREFETCH 512
#endif

/* Row r's cache line of a float32 stream, FGD_PREFETCH bytes ahead. Not for float64: there a
 * row is two lines, twice the loads per instruction, and the hardware prefetcher keeps up
 * (measured: float32 +14%, float64 -8% with it). A prefetch past the end of the array is
 * harmless: it never faults. */
#define FGD_PREFETCH_ROW(T, x, r)                                                                 \
    do {                                                                                          \
        if (sizeof(T) == 4)                                                                       \
            __builtin_prefetch((const char*)((x) + (r)) + FGD_PREFETCH);                          \
    } while (0)

/* FGD_STREAMS (= 4) full blocks x_k (+ y_k) summed side by side into out[k]. Not inlined into
 * the range loop, so that the four lane arrays stay this function's own. */
#define FGD_SUM_BLOCKS(NAME, T, OP)                                                               \
__attribute__((noinline))                                                                         \
static void NAME(const T* const* xs, const T* const* ys, int use_y, double* out) {               \
    double l0[16] = {0}, l1[16] = {0}, l2[16] = {0}, l3[16] = {0};                                \
    const T* restrict x0 = xs[0]; const T* restrict x1 = xs[1];                                   \
    const T* restrict x2 = xs[2]; const T* restrict x3 = xs[3];                                   \
    const T* restrict y0 = ys[0]; const T* restrict y1 = ys[1];                                   \
    const T* restrict y2 = ys[2]; const T* restrict y3 = ys[3];                                   \
    ptrdiff_t r;                                                                                  \
    for (r = 0; r < FGD_BLOCK; r += 16) {                                                         \
        FGD_PREFETCH_ROW(T, x0, r); FGD_PREFETCH_ROW(T, x1, r);                                   \
        FGD_PREFETCH_ROW(T, x2, r); FGD_PREFETCH_ROW(T, x3, r);                                   \
        if (use_y) {                                                                              \
            FGD_PREFETCH_ROW(T, y0, r); FGD_PREFETCH_ROW(T, y1, r);                               \
            FGD_PREFETCH_ROW(T, y2, r); FGD_PREFETCH_ROW(T, y3, r);                               \
        }                                                                                         \
        FGD_ROW(T, OP, l0, x0, y0, r, use_y);                                                     \
        FGD_ROW(T, OP, l1, x1, y1, r, use_y);                                                     \
        FGD_ROW(T, OP, l2, x2, y2, r, use_y);                                                     \
        FGD_ROW(T, OP, l3, x3, y3, r, use_y);                                                     \
    }                                                                                             \
    out[0] = fgd_tree(l0); out[1] = fgd_tree(l1); out[2] = fgd_tree(l2); out[3] = fgd_tree(l3);   \
}

#define FGD_SUM_RANGE(NAME, ONE, T, OP)                                                      \
FGD_SUM_BLOCKS(NAME##_blocks, T, OP)                                                         \
static inline void NAME(const T* x, const T* y, ptrdiff_t n, ptrdiff_t b0, ptrdiff_t b1,        \
                        int use_y, double* blocks) {                                              \
    ptrdiff_t full = n / FGD_BLOCK, bend = b1 < full ? b1 : full;                                 \
    ptrdiff_t per = bend > b0 ? (bend - b0) / FGD_STREAMS : 0, j, b;                              \
    const T* xs[FGD_STREAMS];                                                                     \
    const T* ys[FGD_STREAMS];                                                                     \
    double out[FGD_STREAMS];                                                                      \
    int k;                                                                                        \
    for (j = 0; j < per; j++) {                                                                   \
        for (k = 0; k < FGD_STREAMS; k++) {                                                       \
            xs[k] = x + (b0 + k * per + j) * FGD_BLOCK;                                           \
            ys[k] = y + (b0 + k * per + j) * FGD_BLOCK;                                           \
        }                                                                                         \
        NAME##_blocks(xs, ys, use_y, out);                                                        \
        for (k = 0; k < FGD_STREAMS; k++) blocks[b0 + k * per + j] = out[k];                      \
    }                                                                                             \
    for (b = b0 + FGD_STREAMS * per; b < b1; b++) {                                               \
        ptrdiff_t lo = b * FGD_BLOCK, hi = lo + FGD_BLOCK < n ? lo + FGD_BLOCK : n;               \
        blocks[b] = ONE(x + lo, y + lo, hi - lo, use_y);                                          \
    }                                                                                             \
}

FGD_SUM_RANGE(fgd_sumsq_range_f32, fgd_sumsq_f32, float, FGD_SQ)
FGD_SUM_RANGE(fgd_sumsq_range_f64, fgd_sumsq_f64, double, FGD_SQ)
FGD_SUM_RANGE(fgd_sumabs_range_f32, fgd_sumabs_f32, float, FGD_ABS)
FGD_SUM_RANGE(fgd_sumabs_range_f64, fgd_sumabs_f64, double, FGD_ABS)

#endif
