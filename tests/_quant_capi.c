/* A C API over kernels/_quant.h for tests/test_quant.py (built with gcc, loaded with ctypes):
 * whole arrays, cut into blocks as the formats say. Not part of the package. */
#include <stdint.h>
#include "_quant.h"

#define FOR_BLOCKS(bs)                                                   \
    long b;                                                              \
    for (b = 0; b * (bs) < n; b++) {                                     \
        int k = n - b * (bs) < (bs) ? (int)(n - b * (bs)) : (bs);

void q8(const float* x, long n, int is_signed, uint8_t* codes, float* absmax) {
    if (is_signed) { FOR_BLOCKS(256) absmax[b] = fgd_q8_quantize(x + b * 256, k, 1, codes + b * 256); } }
    else { FOR_BLOCKS(256) absmax[b] = fgd_q8_quantize(x + b * 256, k, 0, codes + b * 256); } }
}

void dq8(const uint8_t* codes, long n, int is_signed, const float* absmax, float* out) {
    if (is_signed) { FOR_BLOCKS(256) fgd_q8_dequantize(codes + b * 256, k, absmax[b], 1, out + b * 256); } }
    else { FOR_BLOCKS(256) fgd_q8_dequantize(codes + b * 256, k, absmax[b], 0, out + b * 256); } }
}

void q4(const float* x, long n, int is_signed, uint8_t* packed, float* absmax) {
    if (is_signed) { FOR_BLOCKS(128) absmax[b] = fgd_q4_quantize(x + b * 128, k, 1, packed + b * 64); } }
    else { FOR_BLOCKS(128) absmax[b] = fgd_q4_quantize(x + b * 128, k, 0, packed + b * 64); } }
}

void dq4(const uint8_t* packed, long n, int is_signed, const float* absmax, float* out) {
    if (is_signed) { FOR_BLOCKS(128) fgd_q4_dequantize(packed + b * 64, k, absmax[b], 1, out + b * 128); } }
    else { FOR_BLOCKS(128) fgd_q4_dequantize(packed + b * 64, k, absmax[b], 0, out + b * 128); } }
}

/* the code of every grid index (8-bit), and the value of every code */
void grid_codes(int is_signed, uint8_t* out) {
    int32_t i;
    for (i = 0; i < FGD_Q_GRID; i++)
        out[i] = (uint8_t)(is_signed
            ? fgd_q8_code(i, FGD_Q8_SIGNED_NSEG, fgd_q8_signed_L, fgd_q8_signed_C, fgd_q8_signed_A, fgd_q8_signed_B)
            : fgd_q8_code(i, FGD_Q8_UNSIGNED_NSEG, fgd_q8_unsigned_L, fgd_q8_unsigned_C, fgd_q8_unsigned_A, fgd_q8_unsigned_B));
}

void values8(int is_signed, float* out) {
    int i;
    for (i = 0; i < 256; i++) out[i] = fgd_q_dynamic_value(i, 7, is_signed);
}

void values4(int is_signed, float* out) {
    int i;
    for (i = 0; i < 16; i++) out[i] = fgd_q4_value(i, is_signed);
}

#if defined(__AVX512F__)
/* x[0..16): the floats whose bits are u, u + step, ... (lo past hi), negated with sign */
static void floats16(float* x, uint64_t u, uint32_t lo, uint32_t hi, uint32_t step, int sign) {
    int k;
    for (k = 0; k < 16; k++) {
        uint64_t b = u + (uint64_t)k * step;
        uint32_t w = (uint32_t)(b < hi ? b : lo) | (sign ? 0x80000000u : 0u);
        memcpy(x + k, &w, 4);
    }
}
#endif

/* The 4-bit codes on the linear map (quant.UNSIGNED4) of the floats whose bits are lo, lo +
 * step, ... below hi (positive, and negative too with signs = 2), v = x * inv: the computed codes of fgd_q4_quantize's
 * vector path against its binary search over the midpoints (which test_c_4bit_equals_reference
 * checks against the reference). The number that differ; -1 without the vector path. */
long q4_linear_mismatches(uint32_t lo, uint32_t hi, uint32_t step, int signs, float inv) {
#if defined(__AVX512F__)
    float x[16] __attribute__((aligned(64)));
    uint8_t got[8], want[8];
    long bad = 0;
    uint64_t u;
    int sign, k;
    __m512 vinv = _mm512_set1_ps(inv);
    for (sign = 0; sign < signs; sign++)
        for (u = lo; u < hi; u += 16 * (uint64_t)step) {
            floats16(x, u, lo, hi, step, sign);
            fgd_q4_codes16_linear(x, vinv, got);
            fgd_q4_codes16(x, vinv, fgd_q4_unsigned_mid16, want);
            for (k = 0; k < 8; k++)
                bad += (got[k] >> 4 != want[k] >> 4) + ((got[k] & 15) != (want[k] & 15));
        }
    return bad;
#else
    (void)lo; (void)hi; (void)step; (void)signs; (void)inv;
    return -1;
#endif
}

/* The AVX-512 path's code of every grid index i (t = i as a float): fgd_q8_codes_of_t16 on
 * the first half, fgd_q8_pack64 of four fgd_q8_dwords_of_t16 (the path of whole blocks) on
 * the second half and on every index again into check; -1 without the vector path. */
int grid_codes_vector(int is_signed, uint8_t* out) {
#if defined(__AVX512F__)
    int32_t i, k;
    float t[64] __attribute__((aligned(64)));
    for (i = 0; i < FGD_Q_GRID; i += 16) {
        for (k = 0; k < 16; k++)
            t[k] = (float)(i + k);
        _mm_storeu_si128((__m128i*)(out + i),
                         fgd_q8_codes_of_t16(_mm512_load_ps(t), is_signed));
    }
#if defined(__AVX512BW__)
    for (i = 0; i < FGD_Q_GRID; i += 64) {
        uint8_t got[64];
        for (k = 0; k < 64; k++)
            t[k] = (float)(i + k);
        _mm512_storeu_si512((void*)got,
                            fgd_q8_pack64(fgd_q8_dwords_of_t16(_mm512_load_ps(t), is_signed),
                                          fgd_q8_dwords_of_t16(_mm512_load_ps(t + 16), is_signed),
                                          fgd_q8_dwords_of_t16(_mm512_load_ps(t + 32), is_signed),
                                          fgd_q8_dwords_of_t16(_mm512_load_ps(t + 48), is_signed)));
        for (k = 0; k < 64; k++)
            if (i >= FGD_Q_GRID / 2)
                out[i + k] = got[k];
            else if (got[k] != out[i + k])
                out[i + k] ^= 0xFF;     /* the two paths differ: fails the comparison */
    }
#endif
    return 0;
#else
    (void)is_signed; (void)out;
    return -1;
#endif
}

/* The grid index of the floats v whose bits are lo, lo + step, ... below hi (both signs with
 * signs = 2): fgd_q8_index16 without its clamp (the path of a finite 1 / absmax) against the
 * definition, (int)((clamp(v, -1, 1) + 1) * 0.5 * 65535 + 0.5) with every operation rounded
 * on its own (volatile: no contraction), NaN -> 0. The number that differ; -1 without the
 * vector path. */
long q8_index_mismatches(uint32_t lo, uint32_t hi, uint32_t step, int signs) {
#if defined(__AVX512F__)
    float x[16] __attribute__((aligned(64))), t[16] __attribute__((aligned(64)));
    long bad = 0;
    uint64_t u;
    int sign, k;
    __m512 one = _mm512_set1_ps(1.0f);
    for (sign = 0; sign < signs; sign++)
        for (u = lo; u < hi; u += 16 * (uint64_t)step) {
            floats16(x, u, lo, hi, step, sign);
            _mm512_store_ps(t, fgd_q8_index16(x, one, 0));
            for (k = 0; k < 16; k++) {
                volatile float c = x[k] < -1.0f ? -1.0f : (x[k] > 1.0f ? 1.0f : x[k]);
                volatile float s1 = c + 1.0f;
                volatile float s2 = s1 * 0.5f;
                volatile float s3 = s2 * 65535.0f;
                volatile float s4 = s3 + 0.5f;
                int32_t want = x[k] != x[k] ? 0 : (int32_t)s4;
                int32_t got = t[k] != t[k] ? 0 : (int32_t)t[k];   /* NaN: code 0 */
                bad += got != want;
            }
        }
    return bad;
#else
    (void)lo; (void)hi; (void)step; (void)signs;
    return -1;
#endif
}
