/* Block-wise 8-bit and 4-bit states: quantize a block of float32 into codes and its absmax,
 * dequantize codes and an absmax into float32. fastgd/quant.py is the definition, bit for bit
 * (the same codes, the same absmax); tests/test_quant.py checks every grid index and code.
 *
 * 8-bit (bitsandbytes 0.50.2's CPU format, blocks of 256): bitsandbytes picks a code through a
 * 65536-entry table of grid indices (fastgd.quant.grid_table). The code of grid index i is a
 * step function of i: here it is computed, not looked up, from linear pieces,
 *     code = C[s] + (int)(A[s] * (i - L[s]) + B[s]),   s = #{j >= 1 : i >= L[j]},
 * each fitted with a margin of 2e-5 to the integers it must not cross (so rounding, fused
 * multiply-adds or not, never changes a code; kernels/_quant_segments.py generates the tables
 * from the reference). The absmax is an integer max of the bits of |x|, a NaN mapped to 0
 * first (bitsandbytes never takes a NaN as the absmax). A map value is computed from the
 * decade arithmetic torch built the map with. No branch, no table search, no gather (gcc
 * -march=native emits none on this AMD CPU, so a lookup loop stays scalar):
 *   - portable loops, each vectorised by gcc (-O3 -fopt-info-vec: 64-byte vectors with
 *     AVX-512, 32-byte with AVX2); the piece is chosen by a chain of masked selects;
 *   - with AVX-512, 16 lanes at once: the piece from a bucket (the side of 0 and the binade of
 *     |2i - 65535|, two-register permutes of 32-entry tables) and at most two compares, its
 *     constants by permutes; dequantize permutes the map from 16 registers.
 * One thread, 16M float32 (64K in cache): quantize 0.69 (0.56) ns an element, dequantize
 * 0.25 (0.21); the portable loops (AVX2) 3.2 and 0.8; bitsandbytes' own CPU functions 7.7 and
 * 2.25.
 *
 * 4-bit (fastgd's, blocks of 128): the exact nearest of 16 values, ties to the lower code, as
 * the count of the 15 midpoints below v (AVX-512: a binary search over them in a register);
 * two codes a byte, element 2k in the high nibble. Quantize 0.38 ns, dequantize 0.21 (16M).
 */
#ifndef FASTGD_QUANT_H
#define FASTGD_QUANT_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define FGD_Q8_BLOCK 256
#define FGD_Q4_BLOCK 128
#define FGD_Q_GRID 65536

/* ---- BEGIN GENERATED (python kernels/_quant_segments.py) ---- */
#define FGD_Q8_SIGNED_NSEG 17
static const int32_t fgd_q8_signed_L[32] __attribute__((aligned(64))) = {0, 29399, 29676, 32422, 32477, 32732, 32743, 32765, 32768, 32772, 32797, 32819, 33077, 33188, 35953, 36506, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420, 65420};
static const int32_t fgd_q8_signed_C[32] __attribute__((aligned(64))) = {0, 64, 66, 96, 98, 112, 114, 121, 131, 135, 142, 144, 158, 160, 190, 192, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255};
static const float fgd_q8_signed_A[32] __attribute__((aligned(64))) = {2.170171356e-03f, 5.434782710e-03f, 1.085094269e-02f, 2.702702768e-02f, 5.421686918e-02f, 1.428571492e-01f, 2.777777910e-01f, 1.333333373e+00f, 1.000000000e+00f, 2.727272809e-01f, 6.666667014e-02f, 5.421686918e-02f, 1.351351384e-02f, 1.085094269e-02f, 2.710027155e-03f, 2.170171356e-03f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f};
static const float fgd_q8_signed_B[32] __attribute__((aligned(64))) = {3.741674664e-05f, 2.717391355e-03f, 9.994288906e-03f, 1.351351384e-02f, 2.108433656e-02f, 7.142857462e-02f, 1.944444478e-01f, 1.666666716e-01f, 5.000000000e-01f, 3.181818128e-01f, 5.666666627e-01f, 2.108433656e-02f, 5.067567825e-01f, 7.138777990e-03f, 5.027100444e-01f, 2.057921141e-03f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f};
#define FGD_Q8_UNSIGNED_NSEG 10
static const int32_t fgd_q8_unsigned_L[32] __attribute__((aligned(64))) = {0, 32768, 32772, 32799, 32810, 33086, 33142, 35999, 36275, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478, 65478};
static const int32_t fgd_q8_unsigned_C[32] __attribute__((aligned(64))) = {0, 7, 15, 30, 32, 62, 64, 126, 128, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255};
static const float fgd_q8_unsigned_A[32] __attribute__((aligned(64))) = {0.000000000e+00f, 2.333333254e+00f, 5.384615660e-01f, 1.428571492e-01f, 1.084337384e-01f, 2.702702768e-02f, 2.170188539e-02f, 5.434782710e-03f, 4.340342712e-03f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f};
static const float fgd_q8_unsigned_B[32] __attribute__((aligned(64))) = {5.000000000e-01f, 8.333333135e-01f, 7.307692170e-01f, 5.000000000e-01f, 6.626506150e-02f, 5.000000000e-01f, 1.570531167e-02f, 5.027173758e-01f, 1.534086652e-03f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f, 5.000000000e-01f};
#define FGD_Q8_SIGNED_NB 2
static const int32_t fgd_q8_signed_S[32] __attribute__((aligned(64))) = {7, 7, 6, 6, 6, 5, 4, 4, 4, 2, 2, 2, 0, 0, 0, 0, 8, 8, 8, 9, 9, 9, 10, 11, 11, 11, 13, 13, 13, 15, 15, 15};
static const int32_t fgd_q8_signed_P[2][32] __attribute__((aligned(64))) = {{65536, 65536, 32765, 65536, 65536, 32743, 32732, 65536, 65536, 32422, 65536, 65536, 29399, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 32797, 32819, 65536, 65536, 33077, 65536, 65536, 35953, 65536, 65536, 65420}, {65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 32477, 65536, 65536, 29676, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 33188, 65536, 65536, 36506, 65536, 65536, 65536}};
#define FGD_Q8_UNSIGNED_NB 2
static const int32_t fgd_q8_unsigned_S[32] __attribute__((aligned(64))) = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 4, 4, 6, 6, 6, 8, 8, 8};
static const int32_t fgd_q8_unsigned_P[2][32] __attribute__((aligned(64))) = {{65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 32799, 32810, 65536, 65536, 33086, 65536, 65536, 35999, 65536, 65536, 65478}, {65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 65536, 33142, 65536, 65536, 36275, 65536, 65536, 65536}};
static const float fgd_q8_signed_map[256] = {-0x1.fc66660000000p-1f, -0x1.f533340000000p-1f, -0x1.ee00000000000p-1f, -0x1.e6cccc0000000p-1f, -0x1.df999a0000000p-1f, -0x1.d866660000000p-1f, -0x1.d133340000000p-1f, -0x1.ca00000000000p-1f, -0x1.c2cccc0000000p-1f, -0x1.bb999a0000000p-1f, -0x1.b466660000000p-1f, -0x1.ad33340000000p-1f, -0x1.a600000000000p-1f, -0x1.9ecccc0000000p-1f, -0x1.97999a0000000p-1f, -0x1.9066660000000p-1f, -0x1.8933340000000p-1f, -0x1.8200000000000p-1f, -0x1.7acccc0000000p-1f, -0x1.73999a0000000p-1f, -0x1.6c66680000000p-1f, -0x1.6533340000000p-1f, -0x1.5e00000000000p-1f, -0x1.56cccc0000000p-1f, -0x1.4f999a0000000p-1f, -0x1.4866680000000p-1f, -0x1.4133340000000p-1f, -0x1.3a00000000000p-1f, -0x1.32cccc0000000p-1f, -0x1.2b999a0000000p-1f, -0x1.2466680000000p-1f, -0x1.1d33340000000p-1f, -0x1.1600000000000p-1f, -0x1.0ecccc0000000p-1f, -0x1.0799980000000p-1f, -0x1.0066660000000p-1f, -0x1.f266640000000p-2f, -0x1.e400000000000p-2f, -0x1.d599980000000p-2f, -0x1.c733340000000p-2f, -0x1.b8cccc0000000p-2f, -0x1.aa66660000000p-2f, -0x1.9c00000000000p-2f, -0x1.8d99980000000p-2f, -0x1.7f33340000000p-2f, -0x1.70cccc0000000p-2f, -0x1.6266660000000p-2f, -0x1.5400000000000p-2f, -0x1.4599980000000p-2f, -0x1.3733340000000p-2f, -0x1.28cccc0000000p-2f, -0x1.1a66680000000p-2f, -0x1.0c00000000000p-2f, -0x1.fb33320000000p-3f, -0x1.de66660000000p-3f, -0x1.c1999a0000000p-3f, -0x1.a4cccc0000000p-3f, -0x1.8800000000000p-3f, -0x1.6b33340000000p-3f, -0x1.4e66660000000p-3f, -0x1.31999a0000000p-3f, -0x1.14cccc0000000p-3f, -0x1.f000000000000p-4f, -0x1.b666680000000p-4f, -0x1.93d70a0000000p-4f, -0x1.8851ee0000000p-4f, -0x1.7cccce0000000p-4f, -0x1.7147ae0000000p-4f, -0x1.65c2900000000p-4f, -0x1.5a3d700000000p-4f, -0x1.4eb8540000000p-4f, -0x1.4333340000000p-4f, -0x1.37ae140000000p-4f, -0x1.2c28f60000000p-4f, -0x1.20a3d60000000p-4f, -0x1.151eba0000000p-4f, -0x1.09999a0000000p-4f, -0x1.fc28f60000000p-5f, -0x1.e51eba0000000p-5f, -0x1.ce147a0000000p-5f, -0x1.b70a3e0000000p-5f, -0x1.a000000000000p-5f, -0x1.88f5c20000000p-5f, -0x1.71eb860000000p-5f, -0x1.5ae1460000000p-5f, -0x1.43d70a0000000p-5f, -0x1.2cccce0000000p-5f, -0x1.15c2900000000p-5f, -0x1.fd70a40000000p-6f, -0x1.cf5c2a0000000p-6f, -0x1.a147ae0000000p-6f, -0x1.7333340000000p-6f, -0x1.451eba0000000p-6f, -0x1.170a3e0000000p-6f, -0x1.d1eb860000000p-7f, -0x1.75c2900000000p-7f, -0x1.3e76c80000000p-7f, -0x1.2c08300000000p-7f, -0x1.19999a0000000p-7f, -0x1.072b020000000p-7f, -0x1.e978d40000000p-8f, -0x1.c49ba60000000p-8f, -0x1.9fbe760000000p-8f, -0x1.7ae1480000000p-8f, -0x1.56041a0000000p-8f, -0x1.3126e80000000p-8f, -0x1.0c49ba0000000p-8f, -0x1.ced9140000000p-9f, -0x1.851eb80000000p-9f, -0x1.3b645a0000000p-9f, -0x1.e353f80000000p-10f, -0x1.4fdf3a0000000p-10f, -0x1.eecbfe0000000p-11f, -0x1.b3d07c0000000p-11f, -0x1.78d5000000000p-11f, -0x1.3dd9820000000p-11f, -0x1.02de020000000p-11f, -0x1.8fc5060000000p-12f, -0x1.19ce0a0000000p-12f, -0x1.47ae160000000p-13f, -0x1.743e960000000p-14f, -0x1.15df660000000p-14f, -0x1.6f00680000000p-15f, -0x1.64840c0000000p-16f, -0x1.040bfe0000000p-17f, -0x1.b435280000000p-19f, -0x1.27476e0000000p-21f, 0x0.0p+0f, 0x1.27476e0000000p-21f, 0x1.b435280000000p-19f, 0x1.040bfe0000000p-17f, 0x1.64840c0000000p-16f, 0x1.6f00680000000p-15f, 0x1.15df660000000p-14f, 0x1.743e960000000p-14f, 0x1.47ae160000000p-13f, 0x1.19ce0a0000000p-12f, 0x1.8fc5060000000p-12f, 0x1.02de020000000p-11f, 0x1.3dd9820000000p-11f, 0x1.78d5000000000p-11f, 0x1.b3d07c0000000p-11f, 0x1.eecbfe0000000p-11f, 0x1.4fdf3a0000000p-10f, 0x1.e353f80000000p-10f, 0x1.3b645a0000000p-9f, 0x1.851eb80000000p-9f, 0x1.ced9140000000p-9f, 0x1.0c49ba0000000p-8f, 0x1.3126e80000000p-8f, 0x1.56041a0000000p-8f, 0x1.7ae1480000000p-8f, 0x1.9fbe760000000p-8f, 0x1.c49ba60000000p-8f, 0x1.e978d40000000p-8f, 0x1.072b020000000p-7f, 0x1.19999a0000000p-7f, 0x1.2c08300000000p-7f, 0x1.3e76c80000000p-7f, 0x1.75c2900000000p-7f, 0x1.d1eb860000000p-7f, 0x1.170a3e0000000p-6f, 0x1.451eba0000000p-6f, 0x1.7333340000000p-6f, 0x1.a147ae0000000p-6f, 0x1.cf5c2a0000000p-6f, 0x1.fd70a40000000p-6f, 0x1.15c2900000000p-5f, 0x1.2cccce0000000p-5f, 0x1.43d70a0000000p-5f, 0x1.5ae1460000000p-5f, 0x1.71eb860000000p-5f, 0x1.88f5c20000000p-5f, 0x1.a000000000000p-5f, 0x1.b70a3e0000000p-5f, 0x1.ce147a0000000p-5f, 0x1.e51eba0000000p-5f, 0x1.fc28f60000000p-5f, 0x1.09999a0000000p-4f, 0x1.151eba0000000p-4f, 0x1.20a3d60000000p-4f, 0x1.2c28f60000000p-4f, 0x1.37ae140000000p-4f, 0x1.4333340000000p-4f, 0x1.4eb8540000000p-4f, 0x1.5a3d700000000p-4f, 0x1.65c2900000000p-4f, 0x1.7147ae0000000p-4f, 0x1.7cccce0000000p-4f, 0x1.8851ee0000000p-4f, 0x1.93d70a0000000p-4f, 0x1.b666680000000p-4f, 0x1.f000000000000p-4f, 0x1.14cccc0000000p-3f, 0x1.31999a0000000p-3f, 0x1.4e66660000000p-3f, 0x1.6b33340000000p-3f, 0x1.8800000000000p-3f, 0x1.a4cccc0000000p-3f, 0x1.c1999a0000000p-3f, 0x1.de66660000000p-3f, 0x1.fb33320000000p-3f, 0x1.0c00000000000p-2f, 0x1.1a66680000000p-2f, 0x1.28cccc0000000p-2f, 0x1.3733340000000p-2f, 0x1.4599980000000p-2f, 0x1.5400000000000p-2f, 0x1.6266660000000p-2f, 0x1.70cccc0000000p-2f, 0x1.7f33340000000p-2f, 0x1.8d99980000000p-2f, 0x1.9c00000000000p-2f, 0x1.aa66660000000p-2f, 0x1.b8cccc0000000p-2f, 0x1.c733340000000p-2f, 0x1.d599980000000p-2f, 0x1.e400000000000p-2f, 0x1.f266640000000p-2f, 0x1.0066660000000p-1f, 0x1.0799980000000p-1f, 0x1.0ecccc0000000p-1f, 0x1.1600000000000p-1f, 0x1.1d33340000000p-1f, 0x1.2466680000000p-1f, 0x1.2b999a0000000p-1f, 0x1.32cccc0000000p-1f, 0x1.3a00000000000p-1f, 0x1.4133340000000p-1f, 0x1.4866680000000p-1f, 0x1.4f999a0000000p-1f, 0x1.56cccc0000000p-1f, 0x1.5e00000000000p-1f, 0x1.6533340000000p-1f, 0x1.6c66680000000p-1f, 0x1.73999a0000000p-1f, 0x1.7acccc0000000p-1f, 0x1.8200000000000p-1f, 0x1.8933340000000p-1f, 0x1.9066660000000p-1f, 0x1.97999a0000000p-1f, 0x1.9ecccc0000000p-1f, 0x1.a600000000000p-1f, 0x1.ad33340000000p-1f, 0x1.b466660000000p-1f, 0x1.bb999a0000000p-1f, 0x1.c2cccc0000000p-1f, 0x1.ca00000000000p-1f, 0x1.d133340000000p-1f, 0x1.d866660000000p-1f, 0x1.df999a0000000p-1f, 0x1.e6cccc0000000p-1f, 0x1.ee00000000000p-1f, 0x1.f533340000000p-1f, 0x1.fc66660000000p-1f, 0x1.0000000000000p+0f};
static const float fgd_q8_unsigned_map[256] = {0x0.0p+0f, 0x1.5cf7540000000p-22f, 0x1.a013300000000p-21f, 0x1.1d36700000000p-19f, 0x1.2599ec0000000p-18f, 0x1.bc98a20000000p-18f, 0x1.29cbaa0000000p-17f, 0x1.0624dc0000000p-16f, 0x1.c2e3400000000p-16f, 0x1.3fd0d00000000p-15f, 0x1.9e30000000000p-15f, 0x1.fc8f340000000p-15f, 0x1.2d77320000000p-14f, 0x1.5ca6c80000000p-14f, 0x1.8bd6620000000p-14f, 0x1.0cb2960000000p-13f, 0x1.82a9940000000p-13f, 0x1.f8a0920000000p-13f, 0x1.374bc80000000p-12f, 0x1.7247440000000p-12f, 0x1.ad42c60000000p-12f, 0x1.e83e440000000p-12f, 0x1.119ce20000000p-11f, 0x1.2f1aa00000000p-11f, 0x1.4c98600000000p-11f, 0x1.6a16200000000p-11f, 0x1.8793de0000000p-11f, 0x1.a511a00000000p-11f, 0x1.c28f5e0000000p-11f, 0x1.e00d1c0000000p-11f, 0x1.fd8adc0000000p-11f, 0x1.2b020c0000000p-10f, 0x1.74bc6a0000000p-10f, 0x1.be76c80000000p-10f, 0x1.0418940000000p-9f, 0x1.28f5c20000000p-9f, 0x1.4dd2f00000000p-9f, 0x1.72b0200000000p-9f, 0x1.978d4e0000000p-9f, 0x1.bc6a800000000p-9f, 0x1.e147ae0000000p-9f, 0x1.03126e0000000p-8f, 0x1.1581040000000p-8f, 0x1.27ef9e0000000p-8f, 0x1.3a5e340000000p-8f, 0x1.4ccccc0000000p-8f, 0x1.5f3b640000000p-8f, 0x1.71a9fa0000000p-8f, 0x1.8418940000000p-8f, 0x1.96872a0000000p-8f, 0x1.a8f5c20000000p-8f, 0x1.bb645c0000000p-8f, 0x1.cdd2f00000000p-8f, 0x1.e0418a0000000p-8f, 0x1.f2b01e0000000p-8f, 0x1.028f5c0000000p-7f, 0x1.0bc6a80000000p-7f, 0x1.14fdf20000000p-7f, 0x1.1e35400000000p-7f, 0x1.276c8a0000000p-7f, 0x1.30a3d60000000p-7f, 0x1.39db240000000p-7f, 0x1.43126e0000000p-7f, 0x1.5eb8540000000p-7f, 0x1.8cccce0000000p-7f, 0x1.bae1460000000p-7f, 0x1.e8f5c40000000p-7f, 0x1.0b851e0000000p-6f, 0x1.228f5e0000000p-6f, 0x1.39999a0000000p-6f, 0x1.50a3d60000000p-6f, 0x1.67ae160000000p-6f, 0x1.7eb8520000000p-6f, 0x1.95c28e0000000p-6f, 0x1.acccce0000000p-6f, 0x1.c3d70e0000000p-6f, 0x1.dae1460000000p-6f, 0x1.f1eb860000000p-6f, 0x1.047ae00000000p-5f, 0x1.1000000000000p-5f, 0x1.1b851e0000000p-5f, 0x1.270a3e0000000p-5f, 0x1.328f5e0000000p-5f, 0x1.3e147a0000000p-5f, 0x1.49999a0000000p-5f, 0x1.551eb80000000p-5f, 0x1.60a3d60000000p-5f, 0x1.6c28f60000000p-5f, 0x1.77ae140000000p-5f, 0x1.8333340000000p-5f, 0x1.8eb8500000000p-5f, 0x1.9a3d700000000p-5f, 0x1.a5c28e0000000p-5f, 0x1.b147ae0000000p-5f, 0x1.bcccce0000000p-5f, 0x1.c851ee0000000p-5f, 0x1.d3d70e0000000p-5f, 0x1.df5c2a0000000p-5f, 0x1.eae1460000000p-5f, 0x1.f666660000000p-5f, 0x1.00f5c40000000p-4f, 0x1.06b8540000000p-4f, 0x1.0c7ae20000000p-4f, 0x1.123d700000000p-4f, 0x1.1800000000000p-4f, 0x1.1dc2900000000p-4f, 0x1.2385200000000p-4f, 0x1.2947ae0000000p-4f, 0x1.2f0a3e0000000p-4f, 0x1.34ccce0000000p-4f, 0x1.3a8f5e0000000p-4f, 0x1.4051ec0000000p-4f, 0x1.46147c0000000p-4f, 0x1.4bd70a0000000p-4f, 0x1.51999a0000000p-4f, 0x1.575c2a0000000p-4f, 0x1.5d1eb80000000p-4f, 0x1.62e1480000000p-4f, 0x1.68a3d60000000p-4f, 0x1.6e66660000000p-4f, 0x1.7428f60000000p-4f, 0x1.79eb860000000p-4f, 0x1.7fae160000000p-4f, 0x1.8570a40000000p-4f, 0x1.8b33340000000p-4f, 0x1.90f5c40000000p-4f, 0x1.96b8520000000p-4f, 0x1.a800000000000p-4f, 0x1.c4cccc0000000p-4f, 0x1.e1999a0000000p-4f, 0x1.fe66660000000p-4f, 0x1.0d99980000000p-3f, 0x1.1c00000000000p-3f, 0x1.2a66680000000p-3f, 0x1.38cccc0000000p-3f, 0x1.4733340000000p-3f, 0x1.5599980000000p-3f, 0x1.6400000000000p-3f, 0x1.7266680000000p-3f, 0x1.80cccc0000000p-3f, 0x1.8f33340000000p-3f, 0x1.9d99980000000p-3f, 0x1.ac00000000000p-3f, 0x1.ba66680000000p-3f, 0x1.c8cccc0000000p-3f, 0x1.d733340000000p-3f, 0x1.e599980000000p-3f, 0x1.f400000000000p-3f, 0x1.0133320000000p-2f, 0x1.0866660000000p-2f, 0x1.0f999a0000000p-2f, 0x1.16cccc0000000p-2f, 0x1.1e00000000000p-2f, 0x1.2533340000000p-2f, 0x1.2c66660000000p-2f, 0x1.3399980000000p-2f, 0x1.3acccc0000000p-2f, 0x1.4200000000000p-2f, 0x1.4933340000000p-2f, 0x1.5066660000000p-2f, 0x1.5799980000000p-2f, 0x1.5ecccc0000000p-2f, 0x1.6600000000000p-2f, 0x1.6d33340000000p-2f, 0x1.7466660000000p-2f, 0x1.7b99980000000p-2f, 0x1.82cccc0000000p-2f, 0x1.8a00000000000p-2f, 0x1.9133340000000p-2f, 0x1.9866660000000p-2f, 0x1.9f99980000000p-2f, 0x1.a6cccc0000000p-2f, 0x1.ae00000000000p-2f, 0x1.b533340000000p-2f, 0x1.bc66660000000p-2f, 0x1.c399980000000p-2f, 0x1.cacccc0000000p-2f, 0x1.d200000000000p-2f, 0x1.d933340000000p-2f, 0x1.e066660000000p-2f, 0x1.e799980000000p-2f, 0x1.eecccc0000000p-2f, 0x1.f600000000000p-2f, 0x1.fd33320000000p-2f, 0x1.0233340000000p-1f, 0x1.05cccc0000000p-1f, 0x1.0966660000000p-1f, 0x1.0d00000000000p-1f, 0x1.1099980000000p-1f, 0x1.1433340000000p-1f, 0x1.17cccc0000000p-1f, 0x1.1b66680000000p-1f, 0x1.1f00000000000p-1f, 0x1.22999a0000000p-1f, 0x1.2633340000000p-1f, 0x1.29cccc0000000p-1f, 0x1.2d66680000000p-1f, 0x1.3100000000000p-1f, 0x1.34999a0000000p-1f, 0x1.3833340000000p-1f, 0x1.3bcccc0000000p-1f, 0x1.3f66680000000p-1f, 0x1.4300000000000p-1f, 0x1.46999a0000000p-1f, 0x1.4a33340000000p-1f, 0x1.4dcccc0000000p-1f, 0x1.5166680000000p-1f, 0x1.5500000000000p-1f, 0x1.58999a0000000p-1f, 0x1.5c33340000000p-1f, 0x1.5fcccc0000000p-1f, 0x1.6366680000000p-1f, 0x1.6700000000000p-1f, 0x1.6a999a0000000p-1f, 0x1.6e33340000000p-1f, 0x1.71cccc0000000p-1f, 0x1.7566680000000p-1f, 0x1.7900000000000p-1f, 0x1.7c999a0000000p-1f, 0x1.8033340000000p-1f, 0x1.83cccc0000000p-1f, 0x1.8766680000000p-1f, 0x1.8b00000000000p-1f, 0x1.8e99980000000p-1f, 0x1.9233340000000p-1f, 0x1.95cccc0000000p-1f, 0x1.9966680000000p-1f, 0x1.9d00000000000p-1f, 0x1.a099980000000p-1f, 0x1.a433340000000p-1f, 0x1.a7cccc0000000p-1f, 0x1.ab66680000000p-1f, 0x1.af00000000000p-1f, 0x1.b299980000000p-1f, 0x1.b633340000000p-1f, 0x1.b9cccc0000000p-1f, 0x1.bd66680000000p-1f, 0x1.c100000000000p-1f, 0x1.c499980000000p-1f, 0x1.c833340000000p-1f, 0x1.cbcccc0000000p-1f, 0x1.cf66680000000p-1f, 0x1.d300000000000p-1f, 0x1.d699980000000p-1f, 0x1.da33340000000p-1f, 0x1.ddcccc0000000p-1f, 0x1.e166680000000p-1f, 0x1.e500000000000p-1f, 0x1.e899980000000p-1f, 0x1.ec33340000000p-1f, 0x1.efcccc0000000p-1f, 0x1.f366680000000p-1f, 0x1.f700000000000p-1f, 0x1.fa99980000000p-1f, 0x1.fe33340000000p-1f, 0x1.0000000000000p+0f};
static const float fgd_q4_signed_map[16] = {-0x1.c666660000000p-1f, -0x1.5333340000000p-1f, -0x1.c000000000000p-2f, -0x1.b333320000000p-3f, -0x1.3d70a40000000p-4f, -0x1.0a3d720000000p-5f, -0x1.6872b00000000p-8f, 0x0.0p+0f, 0x1.6872b00000000p-8f, 0x1.0a3d720000000p-5f, 0x1.3d70a40000000p-4f, 0x1.b333320000000p-3f, 0x1.c000000000000p-2f, 0x1.5333340000000p-1f, 0x1.c666660000000p-1f, 0x1.0000000000000p+0f};
static const float fgd_q4_unsigned_map[16] = {0x1.0000000000000p-4f, 0x1.0000000000000p-3f, 0x1.8000000000000p-3f, 0x1.0000000000000p-2f, 0x1.4000000000000p-2f, 0x1.8000000000000p-2f, 0x1.c000000000000p-2f, 0x1.0000000000000p-1f, 0x1.2000000000000p-1f, 0x1.4000000000000p-1f, 0x1.6000000000000p-1f, 0x1.8000000000000p-1f, 0x1.a000000000000p-1f, 0x1.c000000000000p-1f, 0x1.e000000000000p-1f, 0x1.0000000000000p+0f};
static const float fgd_q4_signed_mid[15] = {-0x1.8ccccc0000000p-1f, -0x1.19999a0000000p-1f, -0x1.4ccccc0000000p-2f, -0x1.28f5c20000000p-3f, -0x1.c28f5c0000000p-5f, -0x1.374bc80000000p-6f, -0x1.6872b00000000p-9f, 0x1.6872b00000000p-9f, 0x1.374bc80000000p-6f, 0x1.c28f5c0000000p-5f, 0x1.28f5c20000000p-3f, 0x1.4ccccc0000000p-2f, 0x1.19999a0000000p-1f, 0x1.8ccccc0000000p-1f, 0x1.e333340000000p-1f};
static const float fgd_q4_unsigned_mid[15] = {0x1.8000000000000p-4f, 0x1.4000000000000p-3f, 0x1.c000000000000p-3f, 0x1.2000000000000p-2f, 0x1.6000000000000p-2f, 0x1.a000000000000p-2f, 0x1.e000000000000p-2f, 0x1.1000000000000p-1f, 0x1.3000000000000p-1f, 0x1.5000000000000p-1f, 0x1.7000000000000p-1f, 0x1.9000000000000p-1f, 0x1.b000000000000p-1f, 0x1.d000000000000p-1f, 0x1.f000000000000p-1f};
static const float fgd_q4_signed_mid16[16] = {-0x1.8ccccc0000000p-1f, -0x1.19999a0000000p-1f, -0x1.4ccccc0000000p-2f, -0x1.28f5c20000000p-3f, -0x1.c28f5c0000000p-5f, -0x1.374bc80000000p-6f, -0x1.6872b00000000p-9f, 0x1.6872b00000000p-9f, 0x1.374bc80000000p-6f, 0x1.c28f5c0000000p-5f, 0x1.28f5c20000000p-3f, 0x1.4ccccc0000000p-2f, 0x1.19999a0000000p-1f, 0x1.8ccccc0000000p-1f, 0x1.e333340000000p-1f, 0x1.0000000000000p+0f};
static const float fgd_q4_unsigned_mid16[16] = {0x1.8000000000000p-4f, 0x1.4000000000000p-3f, 0x1.c000000000000p-3f, 0x1.2000000000000p-2f, 0x1.6000000000000p-2f, 0x1.a000000000000p-2f, 0x1.e000000000000p-2f, 0x1.1000000000000p-1f, 0x1.3000000000000p-1f, 0x1.5000000000000p-1f, 0x1.7000000000000p-1f, 0x1.9000000000000p-1f, 0x1.b000000000000p-1f, 0x1.d000000000000p-1f, 0x1.f000000000000p-1f, 0x1.0000000000000p+0f};
/* ---- END GENERATED ---- */

#if defined(__GNUC__) && !defined(__clang__)
#define FGD_Q_INLINE static inline __attribute__((always_inline))
#else
#define FGD_Q_INLINE static inline
#endif

/* the float of bits u (a union: a memcpy from a local makes it addressable, and then gcc
 * does not vectorise the reduction into it) */
FGD_Q_INLINE float fgd_q_float(uint32_t u) {
    union { uint32_t u; float f; } b;
    b.u = u;
    return b.f;
}

FGD_Q_INLINE uint32_t fgd_q_bits(float f) {
    union { uint32_t u; float f; } b;
    b.f = f;
    return b.u;
}

/* cond ? a : b on the bits (a mask: gcc if-converts it where a float ?: stays a branch) */
FGD_Q_INLINE float fgd_q_select(int cond, float a, float b) {
    uint32_t mask = 0u - (uint32_t)(cond != 0);
    return fgd_q_float((fgd_q_bits(a) & mask) | (fgd_q_bits(b) & ~mask));
}

/* max |x| of x[0..n) over the non-NaN elements, 0 if none: the max of the bits of |x| as
 * unsigned integers (the order of non-negative floats), a NaN's bits replaced by 0 */
FGD_Q_INLINE float fgd_q_absmax(const float* x, int n) {
    uint32_t m = 0;
    int i;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        u &= 0x7FFFFFFFu;
        u &= 0u - (uint32_t)(u <= 0x7F800000u);   /* NaN -> 0, as a mask: written as a select,
                                                      gcc folds it into the max and the
                                                      reduction no longer vectorises */
        m = u > m ? u : m;
    }
    return fgd_q_float(m);
}

/* bitsandbytes' grid index of v = x * inv: (int)((clamp(v, -1, 1) + 1) * 0.5 * 65535 + 0.5),
 * NaN -> 0 (a NaN passes both compares, as in std::clamp) */
FGD_Q_INLINE int32_t fgd_q8_grid_index(float v) {
    float c = v < -1.0f ? -1.0f : v;
    c = c > 1.0f ? 1.0f : c;
    float u = (c + 1.0f) * 0.5f * 65535.0f + 0.5f;
    return (int32_t)(u == u ? u : 0.0f);
}

FGD_Q_INLINE int fgd_q8_code(int32_t idx, int nseg, const int32_t* L, const int32_t* C,
                             const float* A, const float* B) {
    /* the piece of idx: the last whose start is <= idx, chosen with masks (no lookup, no
     * branch: written as selects, gcc kept the branches and the loop stayed scalar) */
    int32_t l = L[0], c = C[0];
    float a = A[0], b = B[0];
    int j;
#pragma GCC unroll 32
    for (j = 1; j < nseg; j++) {
        int32_t ge = -(int32_t)(idx >= L[j]);
        l += (L[j] - l) & ge;
        c += (C[j] - c) & ge;
        a = fgd_q_float(fgd_q_bits(a) ^ ((fgd_q_bits(a) ^ fgd_q_bits(A[j])) & (uint32_t)ge));
        b = fgd_q_float(fgd_q_bits(b) ^ ((fgd_q_bits(b) ^ fgd_q_bits(B[j])) & (uint32_t)ge));
    }
    return c + (int32_t)(a * (float)(idx - l) + b);
}

#if defined(__AVX512F__)
/* 16 codes at once with AVX-512: the piece from two permutes of 32-entry tables (its bucket:
 * the side of 0 and the binade of |2i - 65535|; then the starts of at most 2 pieces inside the
 * bucket), the piece's constants from four more. The same pieces and arithmetic as
 * fgd_q8_code (a NaN clamps to -1 here, vmaxps returning its second operand: grid index 0
 * all the same). */
FGD_Q_INLINE void fgd_q8_codes16(const float* x, __m512 inv, uint8_t* out, const int32_t* S,
                                 const int32_t (*P)[32], int nb, const int32_t* L,
                                 const int32_t* C, const float* A, const float* B) {
    const __m512i one = _mm512_set1_epi32(1);
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x), inv);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1.0f)), _mm512_set1_ps(1.0f));
    __m512 u = _mm512_mul_ps(_mm512_add_ps(v, _mm512_set1_ps(1.0f)), _mm512_set1_ps(0.5f));
    u = _mm512_fmadd_ps(u, _mm512_set1_ps(65535.0f), _mm512_set1_ps(0.5f));  /* fused or
        not, the same index for every float in [-1, 1] (checked exhaustively) */
    __m512i idx = _mm512_cvttps_epi32(u);
    __m512i r = _mm512_abs_epi32(_mm512_sub_epi32(_mm512_add_epi32(idx, idx),
                                                  _mm512_set1_epi32(65535)));
    __m512i key = _mm512_sub_epi32(
        _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(r)), 23), _mm512_set1_epi32(127));
    key = _mm512_mask_add_epi32(key, _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(32768)),
                                key, _mm512_set1_epi32(16));
    __m512i s = _mm512_permutex2var_epi32(_mm512_load_si512(S), key, _mm512_load_si512(S + 16));
    int k;
    for (k = 0; k < nb; k++) {
        __m512i p = _mm512_permutex2var_epi32(_mm512_load_si512(P[k]), key,
                                              _mm512_load_si512(P[k] + 16));
        s = _mm512_mask_add_epi32(s, _mm512_cmpge_epi32_mask(idx, p), s, one);
    }
    __m512i l = _mm512_permutex2var_epi32(_mm512_load_si512(L), s, _mm512_load_si512(L + 16));
    __m512i c = _mm512_permutex2var_epi32(_mm512_load_si512(C), s, _mm512_load_si512(C + 16));
    __m512 a = _mm512_permutex2var_ps(_mm512_load_ps(A), s, _mm512_load_ps(A + 16));
    __m512 b = _mm512_permutex2var_ps(_mm512_load_ps(B), s, _mm512_load_ps(B + 16));
    __m512 f = _mm512_fmadd_ps(a, _mm512_cvtepi32_ps(_mm512_sub_epi32(idx, l)), b);
    c = _mm512_add_epi32(c, _mm512_cvttps_epi32(f));
    _mm_storeu_si128((__m128i*)out, _mm512_cvtepi32_epi8(c));
}
#endif

/* Codes of x[0..n) (n <= 256, one block) on the signed (first moment) or unsigned (second
 * moment) dynamic map; returns the block's absmax. */
FGD_Q_INLINE float fgd_q8_quantize(const float* x, int n, int is_signed, uint8_t* codes) {
    float absmax = fgd_q_absmax(x, n);
    float inv = 1.0f / absmax;          /* 0 -> inf: every element NaN, code 0, as bitsandbytes */
    int i = 0;
#if defined(__AVX512F__)
    __m512 vinv = _mm512_set1_ps(inv);
    if (is_signed)
        for (; i + 16 <= n; i += 16)
            fgd_q8_codes16(x + i, vinv, codes + i, fgd_q8_signed_S, fgd_q8_signed_P,
                           FGD_Q8_SIGNED_NB, fgd_q8_signed_L, fgd_q8_signed_C,
                           fgd_q8_signed_A, fgd_q8_signed_B);
    else
        for (; i + 16 <= n; i += 16)
            fgd_q8_codes16(x + i, vinv, codes + i, fgd_q8_unsigned_S, fgd_q8_unsigned_P,
                           FGD_Q8_UNSIGNED_NB, fgd_q8_unsigned_L, fgd_q8_unsigned_C,
                           fgd_q8_unsigned_A, fgd_q8_unsigned_B);
#endif
    if (is_signed) {
        for (; i < n; i++)
            codes[i] = (uint8_t)fgd_q8_code(fgd_q8_grid_index(x[i] * inv), FGD_Q8_SIGNED_NSEG,
                                            fgd_q8_signed_L, fgd_q8_signed_C, fgd_q8_signed_A,
                                            fgd_q8_signed_B);
    } else {
        for (; i < n; i++)
            codes[i] = (uint8_t)fgd_q8_code(fgd_q8_grid_index(x[i] * inv), FGD_Q8_UNSIGNED_NSEG,
                                            fgd_q8_unsigned_L, fgd_q8_unsigned_C,
                                            fgd_q8_unsigned_A, fgd_q8_unsigned_B);
    }
    return absmax;
}

/* Value of code k of a dynamic map (bitsandbytes' create_dynamic_map, torch's float32 arithmetic),
 * computed, not looked up (gcc does not vectorise a table lookup here: -march=native on this
 * AMD CPU turns gathers off). E exponent bits (7 for 8 bits, 3 for 4 bits), zero at code z
 * (signed: 2^E - 1; unsigned: 0), 1.0 at the last code. Decade d holds m = 2^d (signed) or
 * 2^(d+1) (unsigned) values 10^(d-E+1) * (b[j] + b[j+1]) / 2, b = linspace(0.1, 1, m + 1) as
 * torch computes it: one rounding of 0.1 + step * j below the halfway point (m + 1) / 2, of
 * 1 - step * (m - j) from it on. tests/test_quant.py checks every code of every map. */
FGD_Q_INLINE float fgd_q_dynamic_value(int32_t k, int E, int is_signed) {
    int32_t z = is_signed ? (1 << E) - 1 : 0;
    int32_t top = (1 << (E + 1)) - 1;
    int32_t p = k - z;
    p = p < 0 ? -p : p;                                 /* 1.. within the decades */
    int32_t q = is_signed ? p : p + 1;
    q = q < 1 ? 1 : q;                                  /* k == z: any decade, replaced below */
    int32_t e = (int32_t)(fgd_q_bits((float)q) >> 23) - 127;   /* floor(log2 q) */
    int32_t m = 1 << e, j = q - m;
    float step = (1.0f - 0.1f) * fgd_q_float((uint32_t)(127 - e) << 23);   /* 0.9 / m, exact */
    int32_t half = (m + 1) >> 1;
    float b0 = fgd_q_select(j < half, __builtin_fmaf(step, (float)j, 0.1f),
                            __builtin_fmaf(-step, (float)(m - j), 1.0f));
    float b1 = fgd_q_select(j + 1 < half, __builtin_fmaf(step, (float)(j + 1), 0.1f),
                            __builtin_fmaf(-step, (float)(m - j - 1), 1.0f));
    float mean = (b0 + b1) / 2.0f;
    int32_t t = (is_signed ? e : e - 1) - (E - 1);      /* scale 10^t, t in [-(E-1), 0] */
    float scale = (float)1e-6;
    scale = fgd_q_select(t == -5, (float)1e-5, scale);
    scale = fgd_q_select(t == -4, (float)1e-4, scale);
    scale = fgd_q_select(t == -3, (float)1e-3, scale);
    scale = fgd_q_select(t == -2, (float)1e-2, scale);
    scale = fgd_q_select(t == -1, (float)1e-1, scale);
    scale = fgd_q_select(t == 0, 1.0f, scale);
    float v = scale * mean;
    v = fgd_q_select(k < z, -v, v);
    v = fgd_q_select(k == z, 0.0f, v);
    return fgd_q_select(k == top, 1.0f, v);
}

#if defined(__AVX512F__)
/* map[codes[0..16)] with AVX-512: the 256 values in 16 registers, eight two-register permutes
 * (the low 5 bits of a code) and a tree of blends on bits 5, 6, 7 */
FGD_Q_INLINE __m512 fgd_q8_values16(const uint8_t* codes, const float* map) {
    __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)codes));
    __m512 t[8];
    int g;
    for (g = 0; g < 8; g++)
        t[g] = _mm512_permutex2var_ps(_mm512_loadu_ps(map + 32 * g), c,
                                      _mm512_loadu_ps(map + 32 * g + 16));
    __mmask16 b5 = _mm512_test_epi32_mask(c, _mm512_set1_epi32(32));
    __mmask16 b6 = _mm512_test_epi32_mask(c, _mm512_set1_epi32(64));
    __mmask16 b7 = _mm512_test_epi32_mask(c, _mm512_set1_epi32(128));
    __m512 u0 = _mm512_mask_blend_ps(b5, t[0], t[1]), u1 = _mm512_mask_blend_ps(b5, t[2], t[3]);
    __m512 u2 = _mm512_mask_blend_ps(b5, t[4], t[5]), u3 = _mm512_mask_blend_ps(b5, t[6], t[7]);
    __m512 w0 = _mm512_mask_blend_ps(b6, u0, u1), w1 = _mm512_mask_blend_ps(b6, u2, u3);
    return _mm512_mask_blend_ps(b7, w0, w1);
}
#endif

/* map[code] * absmax for codes[0..n) */
FGD_Q_INLINE void fgd_q8_dequantize(const uint8_t* codes, int n, float absmax, int is_signed,
                                    float* out) {
    int i = 0;
#if defined(__AVX512F__)
    const float* map = is_signed ? fgd_q8_signed_map : fgd_q8_unsigned_map;
    __m512 va = _mm512_set1_ps(absmax);
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(fgd_q8_values16(codes + i, map), va));
#endif
    for (; i < n; i++)
        out[i] = fgd_q_dynamic_value(codes[i], 7, is_signed) * absmax;
}

#if defined(__AVX512F__)
/* 16 4-bit codes with AVX-512, packed into 8 bytes: a binary search over the 15 midpoints (in
 * one register; the 16th is never probed), code += step where mid[code + step - 1] < v (NaN: never) */
FGD_Q_INLINE void fgd_q4_codes16(const float* x, __m512 inv, const float* mid16, uint8_t* out) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x), inv);
    __m512 mid = _mm512_loadu_ps(mid16);
    __m512i c = _mm512_setzero_si512();
    int step;
    for (step = 8; step >= 1; step >>= 1) {
        __m512i probe = _mm512_add_epi32(c, _mm512_set1_epi32(step - 1));
        __mmask16 lt = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(probe, mid), v, _CMP_LT_OQ);
        c = _mm512_mask_add_epi32(c, lt, c, _mm512_set1_epi32(step));
    }
    /* pairs (even, odd) in 64-bit lanes: (even << 4) | odd in the low byte */
    __m512i packed = _mm512_or_si512(_mm512_slli_epi64(c, 4), _mm512_srli_epi64(c, 32));
    _mm_storel_epi64((__m128i*)out, _mm512_cvtepi64_epi8(packed));
}
#endif

/* 4-bit: codes of x[0..n) (n <= 128, one block), packed: byte k holds element 2k (high
 * nibble) and 2k + 1 (low nibble; 0 past an odd n). Returns the absmax. */
FGD_Q_INLINE float fgd_q4_quantize(const float* x, int n, int is_signed, uint8_t* packed) {
    const float* mid = is_signed ? fgd_q4_signed_mid : fgd_q4_unsigned_mid;
    float absmax = fgd_q_absmax(x, n);
    float inv = 1.0f / absmax;
    uint8_t c[FGD_Q4_BLOCK];
    int i = 0, k;
#if defined(__AVX512F__)
    __m512 vinv = _mm512_set1_ps(inv);
    for (; i + 16 <= n; i += 16)
        fgd_q4_codes16(x + i, vinv, is_signed ? fgd_q4_signed_mid16 : fgd_q4_unsigned_mid16,
                       packed + i / 2);
    if (i == n)
        return absmax;
#endif
    int i0 = i;
    for (; i < n; i++) {
        float v = x[i] * inv;
        int q = 0;
#pragma GCC unroll 15
        for (k = 0; k < 15; k++)
            q += v > mid[k];               /* NaN: never above, code 0 */
        c[i] = (uint8_t)q;
    }
    if (n & 1)
        c[n] = 0;
    for (i = i0 / 2; i < (n + 1) / 2; i++)
        packed[i] = (uint8_t)((c[2 * i] << 4) | c[2 * i + 1]);
    return absmax;
}

/* 4-bit values: the signed dynamic map (3 exponent bits), the unsigned linear (k + 1) / 16 */
FGD_Q_INLINE float fgd_q4_value(int32_t k, int is_signed) {
    return is_signed ? fgd_q_dynamic_value(k, 3, 1) : (float)(k + 1) * 0.0625f;
}

FGD_Q_INLINE void fgd_q4_dequantize(const uint8_t* packed, int n, float absmax, int is_signed,
                                    float* out) {
    int i = 0;
#if defined(__AVX512F__)
    /* 8 bytes -> 16 nibbles in element order (high nibble first) -> one permute of the map */
    __m512 map = _mm512_loadu_ps(is_signed ? fgd_q4_signed_map : fgd_q4_unsigned_map);
    __m512 va = _mm512_set1_ps(absmax);
    for (; 2 * i + 16 <= n; i += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i*)(packed + i));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
        __m128i lo = _mm_and_si128(b, _mm_set1_epi8(15));
        __m512i c = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
        _mm512_storeu_ps(out + 2 * i, _mm512_mul_ps(_mm512_permutexvar_ps(c, map), va));
    }
#endif
    for (; i < n / 2; i++) {
        out[2 * i] = fgd_q4_value(packed[i] >> 4, is_signed) * absmax;
        out[2 * i + 1] = fgd_q4_value(packed[i] & 15, is_signed) * absmax;
    }
    if (n & 1)
        out[n - 1] = fgd_q4_value(packed[n / 2] >> 4, is_signed) * absmax;
}

#endif
