/* Storage formats of the Cython kernels: 16 lanes of an array in any format to and from float32
 * registers (fastgd/formats.py is the definition, bit for bit; its codes are FGD_F32 ...).
 *
 * A rule's lane loop (kernels/<rule>.pyx, *_lanes) loads 16 elements of each role with fgd_ld,
 * runs the rule's float32 arithmetic on them, and stores the written roles with fgd_st. The
 * format is a runtime argument: a switch per role and 16 elements, predictable, costs ~5%
 * against formats fixed at compile time (measured on AdamW bf16, 16M), and keeps every rule
 * open to every combination without a specialisation per combination.
 *
 * Which instructions a build uses is fixed at compile time by the -march of setup.py (the
 * registry refuses an extension built for a CPU this one is not, see backends.py):
 *   bfloat16 store: AVX-512 BF16 VCVTNEPS2BF16 (whose rounding formats.py adopts: RNE, NaN
 *                   quieted, zero/subnormal to a signed zero), else the same in integer ops;
 *   float16:        F16C VCVTPH2PS and VCVTPS2PH (loads at FGD_VECTOR_BITS: fgd_ld16_bf16),
 *                   else _Float16 conversions;
 *   everything else in GCC vector extensions (lowered to whatever SIMD the target has).
 * fgd_format_paths() says which, for `fastgd info`.
 */
#ifndef FASTGD_FORMATS_H
#define FASTGD_FORMATS_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

enum { FGD_F32 = 0, FGD_BF16 = 1, FGD_F16 = 2, FGD_F64 = 3, FGD_BF16_SR = 4, FGD_NONE = -1 };

#define FGD_LANES 16
#define FGD_GOLDEN 0x9E3779B9u

typedef uint32_t fgd_u32x16 __attribute__((vector_size(64)));
typedef uint16_t fgd_u16x16 __attribute__((vector_size(32)));
typedef float fgd_f32x16 __attribute__((vector_size(64)));

static inline uint32_t fgd_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float fgd_float(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }


/* --- one element (tails and the reference of the vector paths) ------------------------------ */

static inline uint16_t fgd_bf16_round(uint32_t u, uint32_t add) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    if ((u & 0x7F800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
    return (uint16_t)((u + add) >> 16);
}
static inline uint16_t fgd_to_bf16(float x) {
    uint32_t u = fgd_bits(x);
    return fgd_bf16_round(u, 0x7FFFu + ((u >> 16) & 1u));
}
/* formats.sr_hash: mix32 without its last step (which leaves the high 16 bits as they are) */
static inline uint32_t fgd_sr_hash(uint32_t x) {
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; return x;
}
/* formats.role_multiplier */
static inline uint32_t fgd_sr_mult(int role) { return ((uint32_t)role * FGD_GOLDEN) | 1u; }
static inline uint16_t fgd_to_bf16_sr(float x, uint32_t key, uint32_t i, uint32_t mult) {
    return fgd_bf16_round(fgd_bits(x), (fgd_sr_hash(key ^ (i * FGD_GOLDEN)) * mult) >> 16);
}
static inline float fgd_from_bf16(uint16_t h) { return fgd_float((uint32_t)h << 16); }

static inline float fgd_from_f16(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    _Float16 x; memcpy(&x, &h, 2); return (float)x;
#endif
}
static inline uint16_t fgd_to_f16(float x) {
#if defined(__F16C__)
    return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    _Float16 h = (_Float16)x; uint16_t u; memcpy(&u, &h, 2); return u;
#endif
}

/* fgd_ld of a whole vector prefetches the element FGD_PF_AHEAD on (4 KiB of a 16-bit array, 8
 * of a float32 one): a lane loop reads 4 to 6 streams, more than the hardware prefetcher keeps
 * ahead of on one thread. One thread, same-process A/B of the two builds on Zen 5: bf16 AdamW
 * 1.16x (16M) and 1.03x (64M), fp16 1.13x and 1.12x, float32 params with bf16 states 1.19x
 * (64M), bf16 params with float32 states 1.02x (64M); two threads within 2%, +2-5% with
 * float32 states (1024 and 4096 elements ahead measured too: 2048 best or level). On a Zen 4
 * (32 KiB L1 data cache where Zen 5 has 48) it is the other way: without it the lane loops took
 * 0.82-0.90x the time on one thread and 0.74-0.97x on two (16M; 64M 0.80-0.91x), 512 or 1024
 * elements ahead 0.87-1.0x, prefetcht1 0.88-0.96x (one-process A/Bs,
 * bench/results/2026-12-04-zen4-ab-prefetch-s32.txt). setup.py builds with FGD_PF_AHEAD 0 (no
 * prefetch; the quantized layout then prefetches those streams itself) where the build CPU's
 * L1 data cache is under 48 KiB: a rule fitted to those two CPUs, the Xeon (48 KiB) keeps 2048. Not for
 * code 4 (stochastic rounding is compute-bound: with its roles prefetched it ran 2-4% slower,
 * measured against a build that also differed in its flags; the grad's prefetch alone cost
 * 2%), and the quantized layout no longer
 * prefetches what a lane loop prefetches itself (kernels/_layout.pxd, _q_segment). Numba has
 * no twin: its loops run without (the same prefetches, once per 256 elements of a chunked
 * loop, made fp16 5-9% faster but the mixed-width recipes 5-14% slower, the chunking alone
 * 4-6%: LLVM's loop already keeps its loads in flight). */
#ifndef FGD_PF_AHEAD
#define FGD_PF_AHEAD 2048
#endif
/* Whether fgd_ld prefetches a role in format `fmt` (the quantized layout leaves such a role's
 * stream to the lane loop: kernels/_layout.pxd, _q_segment) */
static inline int fgd_ld_prefetches(int fmt) {
    return FGD_PF_AHEAD > 0 && (fmt == FGD_F32 || fmt == FGD_BF16 || fmt == FGD_F16);
}
/* --- 16 lanes ------------------------------------------------------------------------------- */

/* FGD_VECTOR_BITS: the width gcc vectorises the rules' lane arithmetic at with this build's
 * flags (setup.py probes it: 512 or 256). The 16-bit loads widen into the lane array at that
 * width, so the arithmetic's loads of it forward from one store each (and the stores read it at
 * that width, fgd_lane_bits):
 *   - 256 (gcc 12's Intel tunings): 256-bit halves. While 512-bit operations are in flight an
 *     Intel core runs vector operations on two ports instead of three (ports 0 and 1 fuse), so
 *     one 512-bit widening cost the whole lane loop a port. One-process A/Bs on an Intel Xeon
 *     (Sapphire Rapids class) against one 512-bit widening a load
 *     (bench/results/2026-12-03-xeon-ab-halfloads-s30.txt, 16M): fp16 AdamW 0.84-0.98x the
 *     time, bf16 0.95x on two threads and 0.87-1.0x on one, bf16 params with 8-bit states
 *     0.81-0.88x, master weights and the mixed widths 0.83-1.09x (the host's noise: the
 *     unchanged float32 and 8-bit rows came out 0.81-1.03x).
 *   - 512 (a CPU gcc 12 does not tune for, e.g. an AMD Zen 4 with AVX-512): one 512-bit
 *     widening. The halves there are two 256-bit stores under each 512-bit load of the
 *     arithmetic, a failed store forward: bf16 AdamW 1.45-1.49x the time, fp16 1.47-1.58x, bf16
 *     params with float32 states 1.23-1.30x, with 8-bit states 1.32x (one-process A/B, Zen 4,
 *     16M, 1 and 2 threads, bench/results/2026-12-04-zen4-ab-loadwidth-s32.txt).
 * Stochastic rounding's own arrays load at 512 bits either way (fgd_ld16_bf16_512): its hash is
 * 512-bit (fgd_sr_bits16), and there the halves only added operations (1.02-1.10x in cache). */
#ifndef FGD_VECTOR_BITS
#define FGD_VECTOR_BITS 256
#endif
#if defined(__AVX512F__) && FGD_VECTOR_BITS >= 512
#define FGD_LANES_512 1
#else
#define FGD_LANES_512 0
#endif
/* 256-bit halves with AVX2, else the portable widening */
static inline __attribute__((always_inline)) void fgd_ld16_bf16_halves(const uint16_t* s, float* L) {
#if defined(__AVX2__)
    _mm256_storeu_si256((__m256i*)L, _mm256_slli_epi32(_mm256_cvtepu16_epi32(
                                         _mm_loadu_si128((const __m128i*)s)), 16));
    _mm256_storeu_si256((__m256i*)(L + 8), _mm256_slli_epi32(_mm256_cvtepu16_epi32(
                                               _mm_loadu_si128((const __m128i*)(s + 8))), 16));
#else
    fgd_u16x16 h; memcpy(&h, s, 32);
    fgd_u32x16 u = __builtin_convertvector(h, fgd_u32x16) << 16;
    memcpy(L, &u, 64);
#endif
}
/* one vpmovzxwd from memory with AVX-512 (gcc lowers the vector-extension widening to two
 * half-width ones, an extract and an insert) */
static inline __attribute__((always_inline)) void fgd_ld16_bf16_512(const uint16_t* s, float* L) {
#if defined(__AVX512F__)
    _mm512_storeu_si512(L, _mm512_slli_epi32(_mm512_cvtepu16_epi32(
                               _mm256_loadu_si256((const __m256i*)s)), 16));
#else
    fgd_ld16_bf16_halves(s, L);
#endif
}
static inline __attribute__((always_inline)) void fgd_ld16_bf16(const uint16_t* s, float* L) {
#if FGD_LANES_512
    fgd_ld16_bf16_512(s, L);
#else
    fgd_ld16_bf16_halves(s, L);
#endif
}
static inline __attribute__((always_inline)) void fgd_ld16_f16(const uint16_t* s, float* L) {
#if FGD_LANES_512
    _mm512_storeu_ps(L, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)s)));
#elif defined(__F16C__)
    _mm256_storeu_ps(L, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)s)));
    _mm256_storeu_ps(L + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + 8))));
#else
    int j; for (j = 0; j < 16; j++) L[j] = fgd_from_f16(s[j]);
#endif
}
/* bf16 rounding of 16 lanes: `add` the bits added before truncation (RNE or random) */
static inline __attribute__((always_inline)) fgd_u16x16 fgd_bf16x16(fgd_u32x16 u, fgd_u32x16 add) {
#if defined(__AVX512F__)
    /* NaN and tiny as mask registers applied by masked and/or: 9 instructions where gcc made
     * 14 of the selects below (stochastic rounding's stores are most of its cost) */
    __m512i v = (__m512i)u, hi = _mm512_srli_epi32(v, 16);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(v, (__m512i)add), 16);
    __mmask16 tiny = _mm512_testn_epi32_mask(v, _mm512_set1_epi32(0x7F800000));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(v, _mm512_set1_epi32(0x7FFFFFFF)),
                                            _mm512_set1_epi32(0x7F800000));
    r = _mm512_mask_and_epi32(r, tiny, hi, _mm512_set1_epi32(0x8000));
    r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x40));
    return (fgd_u16x16)_mm512_cvtepi32_epi16(r);
#else
    fgd_u32x16 nan = (fgd_u32x16)((u & 0x7FFFFFFFu) > 0x7F800000u);
    fgd_u32x16 tiny = (fgd_u32x16)((u & 0x7F800000u) == 0);
    fgd_u32x16 r = (u + add) >> 16;
    r = (nan & ((u >> 16) | 0x40u)) | (~nan & ((tiny & ((u >> 16) & 0x8000u)) | (~tiny & r)));
    return __builtin_convertvector(r, fgd_u16x16);
#endif
}
/* The stores read their lane array at FGD_VECTOR_BITS too, the width of the rule's stores into it:
 *   - 256: in halves. A 512-bit load of two 256-bit stores is a failed store forward (~20
 *     cycles). On an Intel Xeon (Sapphire Rapids class), one-process A/B against 512-bit loads
 *     here, 16M, 1 and 2 threads: bf16 AdamW 2.1-2.2x, fp16 2.4-2.5x, the mixed-width recipes
 *     1.1-1.3x, stochastic rounding 1.6-1.7x, bf16 params with 8-bit states 1.3x, float32 level
 *     (bench/results/2026-12-02-xeon-ab-lanestores-s24.txt).
 *   - 512: one 512-bit conversion where halves (which forward from one 512-bit store too) took
 *     two and an insert. One-process A/B on an AMD Zen 4, 16M, against the halves: bf16 AdamW
 *     0.80x the time on one thread and 0.83-0.94x on two, fp16 0.81-0.83x and 0.92-0.94x,
 *     stochastic rounding 0.87-0.91x and 0.82-0.88x, master weights 0.92-0.94x and 0.88-0.89x;
 *     in cache (256K) bf16 0.73x, fp16 0.78x
 *     (bench/results/2026-12-04-zen4-ab-lanestores-s32.txt). */
static inline __attribute__((always_inline)) fgd_u32x16 fgd_lane_bits(const float* L) {
#if FGD_LANES_512
    return (fgd_u32x16)_mm512_loadu_si512(L);
#elif defined(__AVX512F__)
    /* one vector for fgd_bf16x16's 512-bit masks, loaded in halves */
    __m256i lo = _mm256_loadu_si256((const __m256i*)L);
    __m256i hi = _mm256_loadu_si256((const __m256i*)(L + 8));
    return (fgd_u32x16)_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
#else
    fgd_u32x16 u; memcpy(&u, L, 64); return u;
#endif
}
static inline __attribute__((always_inline)) void fgd_st16_bf16(const float* L, uint16_t* d) {
#if FGD_LANES_512 && defined(__AVX512BF16__)
    __m256bh r = _mm512_cvtneps_pbh(_mm512_loadu_ps(L));
    memcpy(d, &r, 32);
#elif defined(__AVX512BF16__) && defined(__AVX512VL__)
    __m128bh r0 = _mm256_cvtneps_pbh(_mm256_loadu_ps(L));
    __m128bh r1 = _mm256_cvtneps_pbh(_mm256_loadu_ps(L + 8));
    memcpy(d, &r0, 16);
    memcpy(d + 8, &r1, 16);
#else
    fgd_u32x16 u = fgd_lane_bits(L);
    fgd_u16x16 r = fgd_bf16x16(u, 0x7FFFu + ((u >> 16) & 1u));
    memcpy(d, &r, 32);
#endif
}
/* formats.sr_bits for the 16 elements from i0: (sr_hash(key ^ (i * FGD_GOLDEN)) * mult) >> 16.
 * The hash depends on the tensor's key and the index only, so every role stored in a lane loop
 * computes the same one (gcc computes it once per vector) and pays one multiply of its own;
 * mix32's first step x ^= x >> 16 distributes over the xor, so the key's half is loop-invariant.
 * (The Numba twin, fastgd/_numba/_views.py, splits it the same way.) */
static inline __attribute__((always_inline)) fgd_u32x16 fgd_sr_bits16(uint32_t key, uint32_t i0, uint32_t mult) {
    /* (lane + i0) * FGD_GOLDEN as lane * FGD_GOLDEN + i0 * FGD_GOLDEN (mod 2^32): a scalar
     * multiply and a broadcast add where gcc multiplied the 16 lanes (vpmulld) */
    static const fgd_u32x16 lane_g = {0u * FGD_GOLDEN, 1u * FGD_GOLDEN, 2u * FGD_GOLDEN,
        3u * FGD_GOLDEN, 4u * FGD_GOLDEN, 5u * FGD_GOLDEN, 6u * FGD_GOLDEN, 7u * FGD_GOLDEN,
        8u * FGD_GOLDEN, 9u * FGD_GOLDEN, 10u * FGD_GOLDEN, 11u * FGD_GOLDEN, 12u * FGD_GOLDEN,
        13u * FGD_GOLDEN, 14u * FGD_GOLDEN, 15u * FGD_GOLDEN};
#if defined(__AVX512F__)
    /* the same in intrinsics: gcc splits vector extensions at its tuning's 256 bits (Intel's and
     * AMD's, gcc 12), and the hash is most of stochastic rounding's work: 1.25x the step (Xeon,
     * 64M, one-process A/B) */
    __m512i v = _mm512_add_epi32(_mm512_loadu_si512(&lane_g),
                                 _mm512_set1_epi32((int)(i0 * FGD_GOLDEN)));
    v = _mm512_xor_si512(_mm512_xor_si512(v, _mm512_srli_epi32(v, 16)),
                         _mm512_set1_epi32((int)(key ^ (key >> 16))));
    v = _mm512_mullo_epi32(v, _mm512_set1_epi32(0x7FEB352D));
    v = _mm512_xor_si512(v, _mm512_srli_epi32(v, 15));
    v = _mm512_mullo_epi32(v, _mm512_set1_epi32((int)0x846CA68Bu));
    return (fgd_u32x16)_mm512_srli_epi32(_mm512_mullo_epi32(v, _mm512_set1_epi32((int)mult)), 16);
#else
    fgd_u32x16 idx = lane_g + (uint32_t)(i0 * FGD_GOLDEN);
    fgd_u32x16 x = (idx ^ (idx >> 16)) ^ (key ^ (key >> 16));
    x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu;
    return (x * mult) >> 16;
#endif
}
static inline __attribute__((always_inline)) void fgd_st16_bf16_sr(const float* L, uint16_t* d, uint32_t key, uint32_t i0, uint32_t mult) {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
    /* (u + r) >> 16 is the conversion of (u + r) with its low 16 bits cleared, which bfloat16
     * holds exactly, so VCVTNEPS2BF16 (round to nearest even) keeps it; a NaN, zero or subnormal
     * x goes to the conversion as it is, which quiets the NaN ((u >> 16) | 0x40) and flushes a
     * tiny value to its signed zero: formats.py's code 4 bit for bit (an inf, or a finite x that
     * rounds up past the largest bfloat16, is inf either way). 4 instructions after the random
     * bits where fgd_bf16x16's masks take 9. */
    __m512i v = (__m512i)fgd_lane_bits(L);
    __mmask16 special = _mm512_fpclass_ps_mask(_mm512_castsi512_ps(v), 0xA7);  /* NaN, 0, subnormal */
    __m512i t = _mm512_mask_and_epi32(v, (__mmask16)~special,
                                      _mm512_add_epi32(v, (__m512i)fgd_sr_bits16(key, i0, mult)),
                                      _mm512_set1_epi32((int)0xFFFF0000u));
    __m256bh r = _mm512_cvtneps_pbh(_mm512_castsi512_ps(t));
    memcpy(d, &r, 32);
#else
    fgd_u32x16 u = fgd_lane_bits(L);
    fgd_u16x16 r = fgd_bf16x16(u, fgd_sr_bits16(key, i0, mult));
    memcpy(d, &r, 32);
#endif
}
static inline __attribute__((always_inline)) void fgd_st16_f16(const float* L, uint16_t* d) {
#if FGD_LANES_512
    _mm256_storeu_si256((__m256i*)d, _mm512_cvtps_ph(_mm512_loadu_ps(L), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)    /* 256-bit halves with AVX-512 at 256-bit vectors: see fgd_lane_bits */
    _mm_storeu_si128((__m128i*)d, _mm256_cvtps_ph(_mm256_loadu_ps(L), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128((__m128i*)(d + 8), _mm256_cvtps_ph(_mm256_loadu_ps(L + 8), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    int j; for (j = 0; j < 16; j++) d[j] = fgd_to_f16(L[j]);
#endif
}

/* Lanes [0, k) of L from elements i .. i + k - 1 of the array at `base` in format `fmt`
 * (k <= 16; lanes k.. are set to 0, never stored). */
static inline __attribute__((always_inline)) void fgd_ld(int fmt, const char* base, ptrdiff_t i, float* L, int k) {
    int j;
    if (k == FGD_LANES) {
        if (fgd_ld_prefetches(fmt))
            __builtin_prefetch(base + (i + FGD_PF_AHEAD) * (fmt == FGD_F32 ? 4 : 2), 0, 3);
        switch (fmt) {
        case FGD_BF16: fgd_ld16_bf16((const uint16_t*)base + i, L); return;
        case FGD_BF16_SR: fgd_ld16_bf16_512((const uint16_t*)base + i, L); return;
        case FGD_F16: fgd_ld16_f16((const uint16_t*)base + i, L); return;
        default: memcpy(L, (const float*)base + i, 64); return;
        }
    }
    for (j = 0; j < FGD_LANES; j++) L[j] = 0.0f;
    for (j = 0; j < k; j++) {
        switch (fmt) {
        case FGD_BF16: case FGD_BF16_SR: L[j] = fgd_from_bf16(((const uint16_t*)base)[i + j]); break;
        case FGD_F16: L[j] = fgd_from_f16(((const uint16_t*)base)[i + j]); break;
        default: L[j] = ((const float*)base)[i + j];
        }
    }
}

/* Lanes [0, k) of L to elements i .. i + k - 1 of the array at `base` in format `fmt`, rounded
 * as formats.py says; `key`: the tensor's stochastic-rounding key (FGD_BF16_SR only), its bits
 * drawn for the array's `role` (its column in the table: formats.role_multiplier), i the index
 * in the tensor (so the random bits of an element do not depend on the thread split). */
static inline __attribute__((always_inline)) void fgd_st(int fmt, const float* L, char* base, ptrdiff_t i, int k, uint32_t key,
                          int role) {
    int j;
    uint32_t mult = fgd_sr_mult(role);
    if (k == FGD_LANES) {
        switch (fmt) {
        case FGD_BF16: fgd_st16_bf16(L, (uint16_t*)base + i); return;
        case FGD_BF16_SR: fgd_st16_bf16_sr(L, (uint16_t*)base + i, key, (uint32_t)i, mult); return;
        case FGD_F16: fgd_st16_f16(L, (uint16_t*)base + i); return;
        default: memcpy((float*)base + i, L, 64); return;
        }
    }
    for (j = 0; j < k; j++) {
        switch (fmt) {
        case FGD_BF16: ((uint16_t*)base)[i + j] = fgd_to_bf16(L[j]); break;
        case FGD_BF16_SR: ((uint16_t*)base)[i + j] = fgd_to_bf16_sr(L[j], key, (uint32_t)(i + j), mult); break;
        case FGD_F16: ((uint16_t*)base)[i + j] = fgd_to_f16(L[j]); break;
        default: ((float*)base)[i + j] = L[j];
        }
    }
}

#define FGD_STR_(x) #x
#define FGD_STR(x) FGD_STR_(x)
/* Which conversion instructions this build uses (fastgd info). */
static inline const char* fgd_format_paths(void) {
    return "bfloat16: "
#if defined(__AVX512BF16__)
        "AVX-512 BF16 (vcvtneps2bf16)"
#else
        "portable integer rounding (vector extensions)"
#endif
        "; float16: "
#if FGD_LANES_512
        "AVX-512F (vcvtph2ps, vcvtps2ph, 16 lanes)"
#elif defined(__F16C__)
        "F16C (vcvtph2ps, vcvtps2ph, 8 lanes)"
#else
        "portable (_Float16 conversions)"
#endif
#if FGD_PF_AHEAD > 0
        "; lane loads prefetch " FGD_STR(FGD_PF_AHEAD) " elements ahead"
#else
        "; no software prefetch in the lane loops"
#endif
#if defined(__AVX512F__)
#if FGD_LANES_512
        "; 16-bit loads and stores 512-bit (the rules' arithmetic runs at 512 bits)"
#else
        "; 16-bit loads and stores in 256-bit halves (the rules' arithmetic runs at 256 bits)"
#endif
#endif
        ;
}

#endif
