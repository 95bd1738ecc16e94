"""Block-wise 8-bit and 4-bit optimizer states: the maps, the codes, the definition.

This module is the reference (NumPy only; no torch, no bitsandbytes) of the quantized storage
formats of issue 15. The C kernels (kernels/_quant.h) follow it bit for bit; tests/test_quant.py
checks both, and checks this module against bitsandbytes itself where it is installed.

8-bit: bitsandbytes 0.50.2, as its CPU optimizers store states
------------------------------------------------------------------
* Blocks of 256 elements (``Optimizer8bit.init_state``: ``blocksize = 256``), one float32
  ``absmax`` per block, one uint8 code per element; the last block may be short.
* Maps (``Optimizer8bit.fill_qmap``): the first moment (``state1``, ``qmap1``) on
  ``create_dynamic_map(signed=True)``, the second (``state2``, ``qmap2``) on
  ``create_dynamic_map(signed=False)``. Both have 256 sorted float32 values. Signed: 127
  negative values (the smallest is -0.99297, there is no -1), 0 at code 127, 127 positive
  values, 1.0 at code 255. Unsigned: 0 at code 0, 254 positive values, 1.0 at code 255.
  Decade ``i`` (0..6) holds ``10**(i-6) * (b[j] + b[j+1]) / 2`` for the ``b = linspace(0.1, 1,
  2**i + 1)`` (signed; ``2**(i+1) + 1`` points unsigned), all in float32 as torch computes it
  (``linspace32``: torch's CPU linspace is a fused multiply-add ``start + step * j`` below the
  halfway point and ``end - step * (steps - 1 - j)`` above it).
* The CPU path of the 8-bit optimizers (``backends/cpu/ops.py``,
  ``_optimizer_update_8bit_blockwise_cpu``) dequantizes both states to float32 tensors
  (``cdequantize_blockwise_cpu_fp32``), runs eager torch ops and quantizes again with
  ``cquantize_blockwise_cpu_fp32``, i.e. ``quantize_cpu_impl<float>`` of csrc/cpu_ops.cpp. That
  function does NOT search the map for the nearest value. Per block:

    absmax = max of |x| over the block's non-NaN elements, 0.0 if there is none
             (``std::max(acc, fabs(x))`` from 0: a NaN never wins); all codes 0 if absmax == 0
    v      = x * (1.0f / absmax)                 (a float32 reciprocal, then a multiply)
    idx    = (uint16)((clamp(v, -1, 1) + 1) * 0.5 * 65535 + 0.5)   (float32; NaN -> 0)
    code   = table[idx],  table[i] = #{k : mid[k] < g[i]},  g[i] = -1 + (2 * i) / 65535,
             mid[k] = 0.5 * (map[k] + map[k + 1])  (all float32)

  so a code is the nearest map value (ties to the lower code) *of the grid point nearest v*,
  the grid having 65536 points over [-1, 1] (spacing 3.05e-5). Consequences, all checked
  against bitsandbytes 0.50.2 in tests/test_quant.py:
    - a 0 in a block whose absmax is not 0 gets code 131 (2.125e-5, signed map) or 7
      (1.5625e-5, unsigned): the grid point nearest 0 is 2**-16, not 0;
    - NaN elements get code 0 (-0.99297 signed, 0 unsigned), whatever the block;
    - an inf makes the block's absmax inf: finite elements become 0 (code 131 / 7), the inf
      itself NaN (code 0);
    - a block of zeros, NaNs or both: absmax 0, every code 0;
    - a subnormal absmax overflows 1/absmax to inf: |x| = absmax gives code 255 or 0 by sign,
      zeros NaN (code 0).
  (bitsandbytes' CUDA kernel picks the exact nearest value instead; the CPU format is the one
  fastgd keeps, as the CPU optimizers are its peers.)
* Dequantize (``dequantizeBlockwise8bitCpu<float>``): ``map[code] * absmax`` in float32.

4-bit: fastgd's format (torchao's choice of maps)
-------------------------------------------------
* Blocks of 128, one float32 absmax per block (as above: the max of the non-NaN |x|).
* First moment on ``dynamic_map(signed=True, max_exponent_bits=3, total_bits=4, pad=False)``
  (torchao's ``QMAP_SIGNED = create_dynamic_map(True, 3, 4)``: 16 values, 0 at code 7, 1.0 at
  code 15); second moment on the linear map without zero (torchao's ``QMAP_UNSIGNED =
  linspace(0, 1, 17)[1:]``): code i is (i + 1) / 16, so a small second moment is never
  stored as 0 (the zero-point problem of 4-bit second moments, Li et al. 2023).
* Codes: the exact nearest map value of v = x * (1.0f / absmax), ties to the lower code:
  ``code = #{k : mid[k] < v}`` (15 float32 midpoints; no grid). NaN v -> code 0; a block of
  zeros (absmax 0: v = 0 * inf = NaN) -> codes 0.
* Packed two codes a byte: element 2k in the high nibble, element 2k + 1 in the low nibble
  (bitsandbytes' 4-bit order, and torchao's); an odd tail leaves a low nibble of 0.
* The maps are torchao's, the rounding is this module's (the 8-bit format's conventions), not
  torchao's bit for bit: torchao (prototype low_bit_optim, quantize_4bit_with_qmap) divides by
  max(absmax, 1e-12) and sends a tie up (``v - lo >= (hi - lo) * 0.5``); here v = x * (1 /
  absmax) and a tie goes down. There is no 4-bit state to interchange with.
"""
import numpy as np

f32 = np.float32

BLOCK8 = 256
BLOCK4 = 128
#: points of the grid over [-1, 1] through which bitsandbytes' CPU quantizer picks a code
GRID = 65536


def linspace32(start, end, steps):
    """torch.linspace(start, end, steps, dtype=torch.float32) as torch computes it on the CPU."""
    s, e = f32(start), f32(end)
    if steps == 1:
        return np.array([s], dtype=f32)
    step = np.float64((e - s) / f32(steps - 1))
    j = np.arange(steps, dtype=np.float64)
    # one rounding of the exact start + step * j (the products and sums are exact in float64)
    lo = np.float64(s) + step * j
    hi = np.float64(e) - step * (steps - 1 - j)
    return np.where(j < steps // 2, lo, hi).astype(f32)


def dynamic_map(signed=True, max_exponent_bits=7, total_bits=8, pad=True):
    """bitsandbytes' ``create_dynamic_map``: float32, sorted; ``pad`` appends zeros up to 256
    values as bitsandbytes does (torchao's copy, used for 4 bits, does not)."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = (2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                 else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        b = linspace32(0.1, 1, items)
        means = (b[:-1] + b[1:]) / f32(2)
        scale = f32(10 ** (-(max_exponent_bits - 1) + i))   # torch casts the scalar to float32
        data += list(scale * means)
        if signed:
            data += list(-scale * means)
    if additional_items > 0:
        b = linspace32(0.1, 1, additional_items + 1)
        means = (b[:-1] + b[1:]) / f32(2)
        scale = f32(10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1))
        data += list(scale * means)
        if signed:
            data += list(-scale * means)
    data += [f32(0), f32(1)]
    assert len(data) == 2 ** total_bits
    if pad:
        data += [f32(0)] * (256 - len(data))
    return np.sort(np.array(data, dtype=f32))


SIGNED8 = dynamic_map(True)
UNSIGNED8 = dynamic_map(False)
SIGNED4 = dynamic_map(True, 3, 4, pad=False)
UNSIGNED4 = (np.arange(1, 17, dtype=f32) / f32(16))
SIGNED4.flags.writeable = SIGNED8.flags.writeable = False
UNSIGNED4.flags.writeable = UNSIGNED8.flags.writeable = False


def midpoints(qmap):
    """The float32 midpoints between consecutive map values (bitsandbytes' build_quantize_lut)."""
    q = np.asarray(qmap, dtype=f32)
    return f32(0.5) * (q[:-1] + q[1:])


def grid_values():
    """The 65536 grid points g[i] = -1 + (2 * i) / 65535 (float32, as bitsandbytes builds them)."""
    i = np.arange(GRID, dtype=f32)
    return f32(-1) + (f32(2) * i) / f32(GRID - 1)


_TABLES = {}


def grid_table(qmap):
    """bitsandbytes' 65536-entry table: the code of each grid point, #{k : mid[k] < g[i]}."""
    key = np.asarray(qmap, dtype=f32).tobytes()
    if key not in _TABLES:
        t = np.searchsorted(midpoints(qmap), grid_values(), side="left").astype(np.uint8)
        t.flags.writeable = False
        _TABLES[key] = t
    return _TABLES[key]


def grid_index(v):
    """The grid index of normalized values v (float32): (uint16)((clamp(v) + 1) * 0.5 * 65535
    + 0.5), NaN -> 0 (what x86 gives for bitsandbytes' out-of-range cast)."""
    v = np.asarray(v, dtype=f32)
    c = np.minimum(np.maximum(v, f32(-1)), f32(1))          # NaN stays NaN
    u = (c + f32(1)) * f32(0.5) * f32(GRID - 1) + f32(0.5)
    return np.where(np.isnan(u), f32(0), np.trunc(u)).astype(np.int64)


def _blocks(x, block):
    x = np.ascontiguousarray(x, dtype=f32).reshape(-1)
    n = x.size
    nb = -(-n // block)
    pad = np.zeros(nb * block, dtype=f32)
    pad[:n] = x
    return pad.reshape(nb, block), n


def block_absmax(x, block):
    """Per block: the max of |x| over its non-NaN elements, 0.0 if none (float32)."""
    b, _ = _blocks(x, block)          # padding zeros never raise a max of non-negatives
    a = np.abs(b)
    return np.where(np.isnan(a), f32(0), a).max(axis=1).astype(f32)


def _normalized(x, block):
    b, n = _blocks(x, block)
    absmax = block_absmax(x, block)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = f32(1) / absmax                       # 0 -> inf: then v = 0 * inf = NaN
        v = b * inv[:, None]
    return v.reshape(-1)[:n], absmax


def quantize8(x, qmap, block=BLOCK8):
    """Codes (uint8, x's length) and absmax (float32, one per block) of x, as bitsandbytes
    0.50.2's CPU ``quantize_blockwise`` gives them (module docstring)."""
    v, absmax = _normalized(x, block)
    # absmax == 0: bitsandbytes writes codes 0; here v is NaN there, grid index 0, and the
    # grid table's code 0 (table[0] = 0 for any map starting below -1 + 2/65535, as both do).
    return grid_table(qmap)[grid_index(v)], absmax


def dequantize(codes, absmax, qmap, block):
    """map[code] * absmax of its block (float32); ``codes`` one per element (unpacked)."""
    codes = np.asarray(codes).reshape(-1)
    q = np.asarray(qmap, dtype=f32)[codes.astype(np.int64)]
    scale = np.repeat(np.asarray(absmax, dtype=f32), block)[:codes.size]
    with np.errstate(invalid="ignore"):              # 0 * inf (an inf absmax): NaN
        return (q * scale).astype(f32)


def dequantize8(codes, absmax, qmap, block=BLOCK8):
    return dequantize(codes, absmax, qmap, block)


def nearest_codes(v, qmap):
    """The exact nearest map value of each v, ties to the lower code (#{k : mid[k] < v}); NaN
    -> 0. The 4-bit format's codes."""
    v = np.asarray(v, dtype=f32)
    c = np.searchsorted(midpoints(qmap), v, side="left")
    return np.where(np.isnan(v), 0, c).astype(np.uint8)


def pack4(codes):
    """Two 4-bit codes a byte: element 2k high nibble, 2k + 1 low nibble (odd tail: low 0)."""
    c = np.asarray(codes, dtype=np.uint8).reshape(-1)
    if c.size % 2:
        c = np.concatenate([c, np.zeros(1, np.uint8)])
    return ((c[0::2] << 4) | (c[1::2] & 0x0F)).astype(np.uint8)


def unpack4(packed, n):
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    c = np.empty(p.size * 2, dtype=np.uint8)
    c[0::2] = p >> 4
    c[1::2] = p & 0x0F
    return c[:n]


def quantize4(x, qmap, block=BLOCK4):
    """Packed codes (uint8, ceil(n / 2)) and absmax (float32, one per block) of x in the 4-bit
    format (module docstring)."""
    v, absmax = _normalized(x, block)
    return pack4(nearest_codes(v, qmap)), absmax


def dequantize4(packed, absmax, qmap, n, block=BLOCK4):
    return dequantize(unpack4(packed, n), absmax, qmap, block)


def nbytes(n, bits):
    """State bytes of n elements in a format: codes plus absmax."""
    block = BLOCK8 if bits == 8 else BLOCK4
    codes = n if bits == 8 else (n + 1) // 2
    return codes + 4 * (-(-n // block))
