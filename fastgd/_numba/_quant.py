"""Quantized states (format codes 5-8) in the Numba many kernels: one block of a state
dequantized into float32 and quantized back, bit for bit fastgd/quant.py (the definition).

``DEQUANTIZE[code](codes, absmax, x, s, e)`` writes elements s..e-1 of a state (s a multiple
of its block, e at most one block on) to x[0..e-s) (a float32 pointer: the staging buffer),
as ``map[code] * absmax`` of the block; ``QUANTIZE[code](...)`` (the same arguments) takes
the block's new absmax (the max of |x| over its non-NaN elements, 0 if none) and stores it and
the block's codes:

- 8 bits (5, 6; blocks of 256): bitsandbytes 0.50.2's CPU rule: v = x * (1 / absmax) in
  float32, the grid index (uint16)((clamp(v, -1, 1) + 1) * 0.5 * 65535 + 0.5) (NaN: 0), its
  code from quant.grid_table (so absmax 0: v = 0 * inf = NaN, every code 0);
- 4 bits (7, 8; blocks of 128): the exact nearest of the 16 map values, ties to the lower code:
  #{k : mid[k] < v} over the 15 midpoints (NaN: 0), two codes a byte, element 2k in the high
  nibble (an odd tail's low nibble 0).

``codes`` and ``absmax`` are the addresses (int64) of the state's codes (uint8) and absmax
(float32, one per block). One compiled function per format: a kernel's copy names those of
its codes, so only their tables are in its machine code. The tables are global NumPy arrays
built from fastgd.quant at import, which Numba freezes into the code as constants. The
absmax is an integer max over the bits of |x| (a NaN's bits made 0), which LLVM vectorises
where a float max that must skip NaNs stays scalar; the 8-bit grid indices and the 4-bit
codes (a binary search by selects) vectorise; the table lookups (the 8-bit codes of the grid
indices, the map values of codes) are scalar. Measured on Zen 4, one thread, 64K elements in
L2, per element: quantize 0.50 ns (8 bits) and 0.40 (4 bits), dequantize 0.30 and 0.27. In
AdamW at 16M elements the 8-bit lookups are most of the time (kernels/_quant.h replaces them
with AVX-512 permutes, which Numba would need LLVM's x86 intrinsics for).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

from .. import quant
from ._compile import _OPTIONS

Q8_SIGNED, Q8_UNSIGNED, Q4_SIGNED, Q4_UNSIGNED = 5, 6, 7, 8
QUANTIZED = (Q8_SIGNED, Q8_UNSIGNED, Q4_SIGNED, Q4_UNSIGNED)
#: elements per absmax block of each code
BLOCK = {Q8_SIGNED: quant.BLOCK8, Q8_UNSIGNED: quant.BLOCK8, Q4_SIGNED: quant.BLOCK4,
         Q4_UNSIGNED: quant.BLOCK4}
BITS = {Q8_SIGNED: 8, Q8_UNSIGNED: 8, Q4_SIGNED: 4, Q4_UNSIGNED: 4}

# The tables (writable copies: one array type for every branch; never written).
_MAP_S8 = np.array(quant.SIGNED8, dtype=np.float32)
_MAP_U8 = np.array(quant.UNSIGNED8, dtype=np.float32)
_GRID_S8 = np.array(quant.grid_table(quant.SIGNED8), dtype=np.uint8)
_GRID_U8 = np.array(quant.grid_table(quant.UNSIGNED8), dtype=np.uint8)
_MAP_S4 = np.array(quant.SIGNED4, dtype=np.float32)
_MAP_U4 = np.array(quant.UNSIGNED4, dtype=np.float32)
_MID_S4 = np.array(quant.midpoints(quant.SIGNED4), dtype=np.float32)
_MID_U4 = np.array(quant.midpoints(quant.UNSIGNED4), dtype=np.float32)
_B8, _B4 = quant.BLOCK8, quant.BLOCK4

# float32 constants (a Python float would promote the arithmetic to float64)
_F0, _F1, _FM1, _HALF = np.float32(0), np.float32(1), np.float32(-1), np.float32(0.5)
_GRID_STEPS = np.float32(quant.GRID - 1)
_ABS, _INF = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000)


@intrinsic
def _pointer(typingctx, address, dtype):
    """The int64 ``address`` as a pointer to ``dtype`` (a NumPy scalar type)."""
    if not isinstance(dtype, types.NumberClass):
        return None
    pt = types.CPointer(dtype.instance_type)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(pt))

    return pt(address, dtype), codegen


@intrinsic
def _float_of_bits(typingctx, u):
    """The float32 whose bits are the uint32 ``u``."""
    if u != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _bits_of_float(typingctx, x):
    """The bits of the float32 ``x`` as a uint32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def stack_buffer(typingctx, n, dtype):
    """A pointer to ``n`` (a literal int) elements of ``dtype`` (a NumPy scalar type) on the
    stack of the calling function (allocated once, in its entry block, 64-byte aligned): a
    staging buffer."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(dtype, types.NumberClass):
        return None
    size = max(1, n.literal_value)
    pt = types.CPointer(dtype.instance_type)

    def codegen(context, builder, sig, args):
        item = context.get_value_type(dtype.instance_type)
        with builder.goto_entry_block():
            slot = builder.alloca(ir.ArrayType(item, size))
            slot.align = 64
        return builder.bitcast(slot, item.as_pointer())

    return pt(n, dtype), codegen


@intrinsic
def offset(typingctx, ptr, n):
    """ptr + n elements (a pointer)."""
    if not isinstance(ptr, types.CPointer) or not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.gep(args[0], [args[1]])

    return ptr(ptr, n), codegen


# Every index below is into a pointer (no wraparound of negative indices, which an array's
# getitem adds and which turns LLVM's vector loads into gathers) or unsigned.

@njit(inline="always", **_OPTIONS)
def _absmax(x, m):
    """max |x[i]| over x[0..m)'s non-NaN elements, 0 if none: an unsigned max of the bits
    (|x| >= 0 orders as its bits; a NaN's bits are made 0)."""
    top = np.uint32(0)
    for i in range(m):
        a = np.uint32(_bits_of_float(x[i]) & _ABS)
        top = max(top, a if a <= _INF else np.uint32(0))
    return _float_of_bits(top)


@njit(inline="always", **_OPTIONS)
def _grid_index(v):
    """quant.grid_index of one float32 v (NaN: 0), an int32."""
    c = v
    if c < _FM1:
        c = _FM1
    if c > _F1:
        c = _F1
    u = (c + _F1) * _HALF * _GRID_STEPS + _HALF
    return np.int32(u if u == u else _F0)


@intrinsic
def _select(typingctx, cond, a, b):
    """a if cond else b, one LLVM select (an ``if`` in Numba is a branch, which the vectoriser
    may or may not flatten)."""
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(*args)

    return a(cond, a, b), codegen


@njit(inline="always", **_OPTIONS)
def _nearest4(v, mid):
    """#{k : mid[k] < v} over the 15 sorted midpoints (NaN: 0, every compare false), by a
    binary search in four compares, each against the midpoint the bits found so far select
    (11 selects; comparing with all 15 midpoints took 0.54 ns an element to this 0.40)."""
    b3 = v > mid[7]
    b2 = v > _select(b3, mid[11], mid[3])
    b1 = v > _select(b3, _select(b2, mid[13], mid[9]), _select(b2, mid[5], mid[1]))
    t = _select(b3, _select(b2, _select(b1, mid[14], mid[12]), _select(b1, mid[10], mid[8])),
                _select(b2, _select(b1, mid[6], mid[4]), _select(b1, mid[2], mid[0])))
    b0 = v > t
    return (np.uint32(b3) << np.uint32(3)) | (np.uint32(b2) << np.uint32(2)) | \
        (np.uint32(b1) << np.uint32(1)) | np.uint32(b0)


@njit(inline="always", **_OPTIONS)
def _dequantize8(qmap, codes, absmax, x, s, e):
    a = _pointer(absmax, np.float32)[s // _B8]
    c = _pointer(codes + s, np.uint8)
    for i in range(e - s):
        x[i] = qmap[c[i]] * a


@njit(inline="always", **_OPTIONS)
def _quantize8(grid, codes, absmax, x, s, e):
    """Two passes after the absmax: the grid indices (vectorised) into a stack buffer, then
    their codes from the grid table, a scalar lookup. In one loop the lookup kept the index
    arithmetic scalar too (1.2 ns an element in L1 on Zen 4, against 0.4 for the two passes);
    a byte table has no gather, and an int32 table's gathers were slower (0.63 ns). (Linear
    pieces chosen by masks, kernels/_quant.h's portable path, vectorise but cost 1.1-1.4 ns:
    16 selects of 4 values an element.)"""
    m = e - s
    a = _absmax(x, m)
    _pointer(absmax, np.float32)[s // _B8] = a
    inv = _F1 / a                       # 0 -> inf: v = 0 * inf = NaN, code 0
    idx = stack_buffer(_B8, np.int32)
    for i in range(m):
        idx[i] = _grid_index(x[i] * inv)
    c = _pointer(codes + s, np.uint8)
    for i in range(m):
        c[i] = grid[np.uint32(idx[i])]


@njit(inline="always", **_OPTIONS)
def _dequantize4(qmap, codes, absmax, x, s, e):
    a = _pointer(absmax, np.float32)[s // _B4]
    c = _pointer(codes + s // 2, np.uint8)
    m = e - s
    for p in range(m // 2):
        b = np.uint32(c[p])
        x[2 * p] = qmap[b >> np.uint32(4)] * a
        x[2 * p + 1] = qmap[b & np.uint32(15)] * a
    if m % 2:
        x[m - 1] = qmap[np.uint32(c[m // 2]) >> np.uint32(4)] * a


@njit(inline="always", **_OPTIONS)
def _quantize4(mid, codes, absmax, x, s, e):
    """Two passes after the absmax: each element's code (vectorised) into a stack buffer, then
    two a byte."""
    m = e - s
    a = _absmax(x, m)
    _pointer(absmax, np.float32)[s // _B4] = a
    inv = _F1 / a
    q = stack_buffer(_B4, np.uint32)
    for i in range(m):
        q[i] = _nearest4(x[i] * inv, mid)
    c = _pointer(codes + s // 2, np.uint8)
    for p in range(m // 2):
        c[p] = np.uint8((q[2 * p] << np.uint32(4)) | q[2 * p + 1])
    if m % 2:
        c[m // 2] = np.uint8(q[m - 1] << np.uint32(4))


# One compiled function per format (not inlined in Numba's IR: each is typed and compiled
# once, LLVM inlines it into the kernel): the kernel's copy names the ones of its codes, so
# neither the other formats' branches nor their tables are in its code.

@njit(**_OPTIONS)
def dequantize_s8(codes, absmax, x, s, e):
    _dequantize8(_MAP_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u8(codes, absmax, x, s, e):
    _dequantize8(_MAP_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_s4(codes, absmax, x, s, e):
    _dequantize4(_MAP_S4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u4(codes, absmax, x, s, e):
    _dequantize4(_MAP_U4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_s8(codes, absmax, x, s, e):
    _quantize8(_GRID_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_u8(codes, absmax, x, s, e):
    _quantize8(_GRID_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_s4(codes, absmax, x, s, e):
    _quantize4(_MID_S4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_u4(codes, absmax, x, s, e):
    _quantize4(_MID_U4, codes, absmax, x, s, e)


@njit(inline="always", **_OPTIONS)
def nothing(codes, absmax, x, s, e):
    """The staging of an empty slot."""


#: code -> ``f(codes, absmax, x, s, e)``: elements s..e-1 (s a multiple of the block, e at
#: most one block on) of the state at the addresses ``codes`` (uint8) and ``absmax`` (float32,
#: one per block) to x[0..e-s) (a float32 pointer) as map[code] * absmax ...
DEQUANTIZE = {Q8_SIGNED: dequantize_s8, Q8_UNSIGNED: dequantize_u8, Q4_SIGNED: dequantize_s4,
              Q4_UNSIGNED: dequantize_u4}
#: ... and back: the block's new absmax, then its codes
QUANTIZE = {Q8_SIGNED: quantize_s8, Q8_UNSIGNED: quantize_u8, Q4_SIGNED: quantize_s4,
            Q4_UNSIGNED: quantize_u4}
