/* Block reductions of kernels/norms.pyx in GCC/Clang vector extensions (portable: the compiler
 * lowers them to whatever SIMD the target has, or to scalars).
 *
 * Written in C because gcc, given the same loop in Cython, vectorised the wrong loop (strided
 * loads over blocks) and ran at a third of the speed. The summation order is exactly that of
 * the scalar definition in norms.pyx / fastgd/_numba/norms.py: 16 float64 lanes, lane j takes
 * the elements i % 16 == j of the block in order (here lanes 0-3 are a0, 4-7 a1, 8-11 a2,
 * 12-15 a3); the lanes are combined by the same fixed tree. float32 is widened to float64 before
 * it is squared (exact), so these are bitwise equal to the scalar twin for float32.
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
static inline fgd_v4d fgd_sq(fgd_v4d a, fgd_v4d v) { return a + v * v; }
static inline fgd_v4d fgd_sabs(fgd_v4d a, fgd_v4d v) { return a + fgd_abs(v); }

/* The fixed combination of the 16 lanes: (l[j] + l[j+8]), then (s[j] + s[j+4]), then
 * (s0 + s2) + (s1 + s3). */
static inline double fgd_tree(const double* l) {
    double s[8];
    int j;
    for (j = 0; j < 8; j++) s[j] = l[j] + l[j + 8];
    for (j = 0; j < 4; j++) s[j] = s[j] + s[j + 4];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

/* sum over a block of OP(x[i] (+ y[i])); T the element type, SUF f32/f64, OP fgd_sq/fgd_sabs,
 * SCALAR the same operation on one double (for the tail, lane j = its index mod 16). */
#define FGD_SUM_BLOCK(NAME, T, SUF, OP, SCALAR)                                                   \
static inline double NAME(const T* x, const T* y, ptrdiff_t n, int use_y) {                      \
    fgd_v4d a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;                                       \
    double l[16];                                                                                 \
    ptrdiff_t i, nfull = n - n % 16;                                                              \
    if (use_y) {                                                                                  \
        for (i = 0; i < nfull; i += 16) {                                                         \
            a0 = OP(a0, fgd_ld2_##SUF(x + i, y + i));                                             \
            a1 = OP(a1, fgd_ld2_##SUF(x + i + 4, y + i + 4));                                     \
            a2 = OP(a2, fgd_ld2_##SUF(x + i + 8, y + i + 8));                                     \
            a3 = OP(a3, fgd_ld2_##SUF(x + i + 12, y + i + 12));                                   \
        }                                                                                         \
    } else {                                                                                      \
        for (i = 0; i < nfull; i += 16) {                                                         \
            a0 = OP(a0, fgd_ld_##SUF(x + i));                                                     \
            a1 = OP(a1, fgd_ld_##SUF(x + i + 4));                                                 \
            a2 = OP(a2, fgd_ld_##SUF(x + i + 8));                                                 \
            a3 = OP(a3, fgd_ld_##SUF(x + i + 12));                                                \
        }                                                                                         \
    }                                                                                             \
    memcpy(l, &a0, 32); memcpy(l + 4, &a1, 32); memcpy(l + 8, &a2, 32); memcpy(l + 12, &a3, 32); \
    for (i = nfull; i < n; i++) {                                                                 \
        T v = use_y ? (T)(x[i] + y[i]) : x[i];                                                    \
        double a = (double)v;                                                                     \
        l[i - nfull] = SCALAR;                                                                    \
    }                                                                                             \
    return fgd_tree(l);                                                                           \
}

FGD_SUM_BLOCK(fgd_sumsq_f32, float, f32, fgd_sq, l[i - nfull] + a * a)
FGD_SUM_BLOCK(fgd_sumsq_f64, double, f64, fgd_sq, l[i - nfull] + a * a)
FGD_SUM_BLOCK(fgd_sumabs_f32, float, f32, fgd_sabs, l[i - nfull] + fabs(a))
FGD_SUM_BLOCK(fgd_sumabs_f64, double, f64, fgd_sabs, l[i - nfull] + fabs(a))

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
 * block of every run is summed in the same loop, loads interleaved. Each block still has its
 * own 16 lanes, filled in exactly FGD_SUM_BLOCK's order, and its sum goes to blocks[b]: the
 * per-block results, and so the norm (blocks are added in block order by the caller), are
 * bitwise what they were, at any thread count. Blocks left over (fewer than FGD_STREAMS, and a
 * partial last block) are summed one at a time by FGD_SUM_BLOCK. */
#define FGD_BLOCK 4096      /* = BLOCK in norms.pyx: the unit of the summation order */
#define FGD_STREAMS 4

/* FGD_STREAMS full blocks x[k] (+ y[k]), k < FGD_STREAMS, summed side by side into out[k]. A
 * function of its own (not inlined into the range loop): gcc then keeps the 16 accumulators in
 * registers (measured: inlined, the interleaving gained nothing). */
#define FGD_SUM_BLOCKS(NAME, T, SUF, OP)                                                          \
__attribute__((noinline))                                                                         \
static void NAME(const T* const* xs, const T* const* ys, int use_y, double* out) {               \
    fgd_v4d a[FGD_STREAMS][4];                                                                    \
    double l[16];                                                                                 \
    ptrdiff_t i;                                                                                  \
    int k;                                                                                        \
    for (k = 0; k < FGD_STREAMS; k++) {                                                           \
        fgd_v4d z = {0, 0, 0, 0};                                                                 \
        a[k][0] = z; a[k][1] = z; a[k][2] = z; a[k][3] = z;                                       \
    }                                                                                             \
    if (use_y) {                                                                                  \
        for (i = 0; i < FGD_BLOCK; i += 16) {                                                     \
            for (k = 0; k < FGD_STREAMS; k++) {                                                   \
                a[k][0] = OP(a[k][0], fgd_ld2_##SUF(xs[k] + i, ys[k] + i));                       \
                a[k][1] = OP(a[k][1], fgd_ld2_##SUF(xs[k] + i + 4, ys[k] + i + 4));               \
                a[k][2] = OP(a[k][2], fgd_ld2_##SUF(xs[k] + i + 8, ys[k] + i + 8));               \
                a[k][3] = OP(a[k][3], fgd_ld2_##SUF(xs[k] + i + 12, ys[k] + i + 12));             \
            }                                                                                     \
        }                                                                                         \
    } else {                                                                                      \
        for (i = 0; i < FGD_BLOCK; i += 16) {                                                     \
            for (k = 0; k < FGD_STREAMS; k++) {                                                   \
                a[k][0] = OP(a[k][0], fgd_ld_##SUF(xs[k] + i));                                   \
                a[k][1] = OP(a[k][1], fgd_ld_##SUF(xs[k] + i + 4));                               \
                a[k][2] = OP(a[k][2], fgd_ld_##SUF(xs[k] + i + 8));                               \
                a[k][3] = OP(a[k][3], fgd_ld_##SUF(xs[k] + i + 12));                              \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    for (k = 0; k < FGD_STREAMS; k++) {                                                           \
        memcpy(l, &a[k][0], 32); memcpy(l + 4, &a[k][1], 32);                                     \
        memcpy(l + 8, &a[k][2], 32); memcpy(l + 12, &a[k][3], 32);                                \
        out[k] = fgd_tree(l);                                                                     \
    }                                                                                             \
}

#define FGD_SUM_RANGE(NAME, ONE, T, SUF, OP)                                                      \
FGD_SUM_BLOCKS(NAME##_blocks, T, SUF, OP)                                                         \
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

FGD_SUM_RANGE(fgd_sumsq_range_f32, fgd_sumsq_f32, float, f32, fgd_sq)
FGD_SUM_RANGE(fgd_sumsq_range_f64, fgd_sumsq_f64, double, f64, fgd_sq)
FGD_SUM_RANGE(fgd_sumabs_range_f32, fgd_sumabs_f32, float, f32, fgd_sabs)
FGD_SUM_RANGE(fgd_sumabs_range_f64, fgd_sumabs_f64, double, f64, fgd_sabs)

#endif
