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
its codes, so only their tables are in its machine code. The absmax is an integer max over the
bits of |x|, which LLVM vectorises where a float max that must skip NaNs stays scalar; as
kernels/_quant.h's fgd_q_absmax, the NaN-masked max runs only when the plain one is a NaN's.

Two paths, chosen at import from the Numba target's features (``VECTOR_Q8``, ``VECTOR_DQ8``,
``VECTOR_Q4``; NUMBA_CPU_NAME / NUMBA_CPU_FEATURES included, and they key Numba's cache):

- portable (``QUANTIZE_PORTABLE``, ``DEQUANTIZE_PORTABLE``; the tests run them on any CPU):
  loops LLVM vectorises (the 8-bit grid indices into a stack buffer, the 4-bit codes by a
  binary search of selects) and scalar table lookups (the 8-bit codes of the grid indices in
  the 65536-entry quant.grid_table, the map values of codes). The tables are global NumPy
  arrays, which Numba freezes into the code as constants.
- AVX-512 (F; the 8-bit planes also VBMI and BW): kernels/_quant.h's vector methods, the same
  operations emitted as LLVM IR (``intrinsic`` codegen: x86 permute intrinsics, fused
  multiply-adds where the C fuses, since its tables are checked for one rounding, and
  vcvttps2dq where LLVM's fptosi of a NaN would be poison). 8-bit quantize: 16 codes computed
  from the mirrored half grid, no table (fgd_q8_codes_of_t16: a = |grid index - 32767.5|,
  its bucket a half binade by two-register permutes of 32-entry tables, one compare, the
  piece's line; below the middle 254 - code saturated, or 0 for the unsigned map; the tables
  from kernels/_quant_segments.py, kept in _quant_tables.py). 8-bit dequantize: 64 codes at
  once from the map's four byte planes (fgd_q8_values64: vpermi2b), or without VBMI 16 from
  the map in 16 registers (fgd_q8_values16). 4 bits: the binary search over the midpoints in
  one register (fgd_q4_codes16), the linear unsigned map's ceil(16 v - 1.5)
  (fgd_q4_codes16_linear), the dequantize one permute of the 16 values.

Measured on Zen 4, one thread, 32 blocks in L1 (the block functions alone, per value; the
quantize with its absmax), portable -> AVX-512: 8-bit quantize 0.50 -> 0.34 ns (signed;
unsigned 0.33), dequantize 0.31 -> 0.085 (0.22 from the registers); 4-bit quantize 0.42 ->
0.36 (signed), 0.42 -> 0.22 (linear), dequantize 0.28 -> 0.072. The portable 8-bit lookups
were most of an 8-bit AdamW step (fp32 params, 64K elements: 2.0-2.2 ns an element against
Cython's 1.25-1.3); with the vector paths 1.17-1.2, 4-bit 1.8 -> 1.03-1.05 (Cython 1.13-1.15),
and at 16M 8-bit 2.33 -> 1.16 (Cython 1.37), 4-bit 1.73 -> 1.00 (Cython 1.17), same runs.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .. import quant
from . import _quant_tables
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
_FMAX = np.float32(3.4028234663852886e38)


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
def _absmax_masked(x, m):
    """max |x[i]| over x[0..m)'s non-NaN elements, 0 if none: an unsigned max of the bits
    (|x| >= 0 orders as its bits; a NaN's bits are made 0)."""
    top = np.uint32(0)
    for i in range(m):
        a = np.uint32(_bits_of_float(x[i]) & _ABS)
        top = max(top, a if a <= _INF else np.uint32(0))
    return _float_of_bits(top)


@njit(inline="always", **_OPTIONS)
def _absmax(x, m):
    """_absmax_masked, as fgd_q_absmax: the max of the bits of |x| alone (two operations a
    vector), then the NaN-masked loop only if that max is a NaN's."""
    top = np.uint32(0)
    for i in range(m):
        top = max(top, np.uint32(_bits_of_float(x[i]) & _ABS))
    if top > _INF:
        return _absmax_masked(x, m)
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


# ---- AVX-512: the C side's vector methods (kernels/_quant.h), emitted as LLVM IR -----------

_F32, _I8, _I16, _I32 = ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V16F, _V16I, _V64B = ir.VectorType(_F32, 16), ir.VectorType(_I32, 16), ir.VectorType(_I8, 64)
_V16B = ir.VectorType(_I8, 16)


def _features():
    """The target features of Numba's CPU codegen (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
    included: what the machine code is compiled for, which also keys Numba's cache)."""
    from numba.core.registry import cpu_target
    return set(cpu_target.target_context.codegen().magic_tuple()[2].split(","))


_FEATURES = _features()
#: the 8-bit quantize's vector path (16 lanes, two-register permutes): AVX-512 F
VECTOR_Q8 = "+avx512f" in _FEATURES
#: the 8-bit dequantize's byte planes (64 codes at once, byte permutes): AVX-512 VBMI and BW
#: (with AVX-512 F alone, 16 codes at once from the map in 16 registers)
VECTOR_DQ8 = VECTOR_Q8 and "+avx512vbmi" in _FEATURES and "+avx512bw" in _FEATURES


def _splat(t, v, n=16):
    return ir.Constant(ir.VectorType(t, n), [ir.Constant(t, v)] * n)


def _vconst(t, values):
    return ir.Constant(ir.VectorType(t, len(values)), [ir.Constant(t, v) for v in values])


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _broadcast(builder, f):
    """The float f in all 16 lanes."""
    v = builder.insert_element(ir.Constant(_V16F, None), f, _I32(0))
    return builder.shuffle_vector(v, v, ir.Constant(_V16I, None))


def _vptr(builder, ptr, vt):
    return builder.bitcast(ptr, vt.as_pointer())


def _permute2(builder, lo, idx, hi):
    """The two-register permute (vpermi2d/ps/b): lanes of lo ++ hi at the low bits of idx."""
    t = lo.type
    kind = {_V16F: "ps.512", _V16I: "d.512", _V64B: "qi.512"}[t]
    return _call(builder, f"llvm.x86.avx512.vpermi2var.{kind}", t, [lo, idx, hi])


_TABLES8 = {True: _quant_tables.SIGNED, False: _quant_tables.UNSIGNED}


def _codes16_ir(builder, x, inv, out, signed, clamp):
    """fgd_q8_codes_of_t16(fgd_q8_index16(x, inv, clamp)) of kernels/_quant.h: the 16 codes of
    x[0..16) * inv stored at out[0..16), the same operations (fused where the C fuses: the
    tables are checked for one rounding)."""
    c, K, S, P, A, B = _TABLES8[signed]
    v = builder.fmul(builder.load(_vptr(builder, x, _V16F), align=4), _broadcast(builder, inv))
    fma = "llvm.fma.v16f32"
    if clamp:       # NaN -> -1 (as vmaxps): index 0, code 0
        m1, p1 = _splat(_F32, -1.0), _splat(_F32, 1.0)
        v = builder.select(builder.fcmp_ordered(">", v, m1), v, m1)
        v = builder.select(builder.fcmp_ordered("<", v, p1), v, p1)
    u = _call(builder, fma, _V16F, [v, _splat(_F32, 0.5), _splat(_F32, 0.5)])
    u = _call(builder, fma, _V16F, [u, _splat(_F32, 65535.0), _splat(_F32, 0.5)])
    t = _call(builder, "llvm.trunc.v16f32", _V16F, [u])
    d = builder.fsub(t, _splat(_F32, 32767.5))
    a = _call(builder, "llvm.fabs.v16f32", _V16F, [d])
    kf = _call(builder, fma, _V16F, [a, _splat(_F32, c), _splat(_F32, K)])
    key = builder.lshr(builder.bitcast(kf, _V16I), _splat(_I32, 22))
    s = _permute2(builder, _vconst(_I32, S[:16]), key, _vconst(_I32, S[16:]))
    p = _permute2(builder, _vconst(_F32, P[:16]), key, _vconst(_F32, P[16:]))
    s = builder.add(s, builder.zext(builder.fcmp_ordered(">=", a, p), _V16I))
    la = _permute2(builder, _vconst(_F32, A[:16]), s, _vconst(_F32, A[16:]))
    lb = _permute2(builder, _vconst(_F32, B[:16]), s, _vconst(_F32, B[16:]))
    y = _call(builder, fma, _V16F, [la, a, lb])
    # vcvttps2dq: a NaN (x NaN, or 0 * inf) converts to INT_MIN, whose low byte is code 0
    # (LLVM's fptosi of a NaN would be poison)
    f = _call(builder, "llvm.x86.avx512.mask.cvttps2dq.512", _V16I,
              [y, ir.Constant(_V16I, None), _I16(-1), _I32(4)])
    f = builder.trunc(f, _V16B)
    zero = ir.Constant(_V16F, None)
    if signed:      # below the middle: 254 - code, saturated at 0
        mirror = _call(builder, "llvm.usub.sat.v16i8", _V16B, [_splat(_I8, 254), f])
        f = builder.select(builder.fcmp_ordered("<", d, zero), mirror, f)
    else:           # the unsigned table is 0 below the middle
        f = builder.select(builder.fcmp_ordered(">", d, zero), f, ir.Constant(_V16B, None))
    builder.store(f, _vptr(builder, out, _V16B), align=1)


@intrinsic
def _q8_codes16(typingctx, x, inv, out, signed, clamp):
    """The 16 codes of x[0..16) * inv (x a float32 pointer) at out[0..16) (a uint8 pointer),
    on the signed or unsigned map (a literal bool), clamping v to [-1, 1] first or not (a
    literal bool: needed only when inv is infinite)."""
    if not (isinstance(signed, types.BooleanLiteral) and isinstance(clamp, types.BooleanLiteral)):
        return None
    sg, cl = signed.literal_value, clamp.literal_value

    def codegen(context, builder, sig, args):
        _codes16_ir(builder, args[0], args[1], args[2], sg, cl)
        return context.get_dummy_value()

    return types.none(x, inv, out, signed, clamp), codegen


# fgd_q8_order: position 16 L + 4 m + t (lane L) holds code 16 m + 4 L + t, so that after the
# in-lane unpacks register m holds values 16 m .. 16 m + 15 in order
_ORDER = [16 * m + 4 * L + t for L in range(4) for m in range(4) for t in range(4)]


def _unpack(lo, lanes, per):
    """The shufflevector mask of punpckl*/punpckh* (lo: low halves) on ``lanes`` 128-bit lanes
    of ``per`` elements each."""
    half = per // 2
    mask = []
    for L in range(lanes):
        for k in range(half):
            j = L * per + k + (0 if lo else half)
            mask += [j, j + lanes * per]
    return _vconst(_I32, mask)


def _planes(qmap):
    """The 4 byte planes of a float32 map (plane j: byte j of every value, little endian), each
    four 64-byte pieces."""
    b = np.ascontiguousarray(qmap, dtype=np.float32).view(np.uint8).reshape(-1, 4).T
    return [[[int(v) for v in b[j, 64 * q:64 * q + 64]] for q in range(4)] for j in range(4)]


_PLANES8 = {True: _planes(_MAP_S8), False: _planes(_MAP_U8)}


def _values64_ir(builder, codes, a, out, signed):
    """fgd_q8_values64 of kernels/_quant.h: map[codes[0..64)] * a at out[0..64), the map's
    byte j from plane j by two two-register byte permutes (the low 7 bits of a code) and a
    select on bit 7, the planes interleaved into floats by unpacks."""
    c = builder.load(_vptr(builder, codes, _V64B), align=1)
    c = builder.shuffle_vector(c, c, _vconst(_I32, _ORDER))
    high = builder.icmp_signed("<", c, ir.Constant(_V64B, None))
    b = []
    for plane in _PLANES8[signed]:
        q = [_vconst(_I8, piece) for piece in plane]
        b.append(builder.select(high, _permute2(builder, q[2], c, q[3]),
                                _permute2(builder, q[0], c, q[1])))
    w = [builder.shuffle_vector(b[0], b[1], _unpack(True, 4, 16)),
         builder.shuffle_vector(b[0], b[1], _unpack(False, 4, 16)),
         builder.shuffle_vector(b[2], b[3], _unpack(True, 4, 16)),
         builder.shuffle_vector(b[2], b[3], _unpack(False, 4, 16))]
    v32 = ir.VectorType(_I16, 32)
    w = [builder.bitcast(x, v32) for x in w]
    va = _broadcast(builder, a)
    base = _vptr(builder, out, _V16F)
    for m, (p, q, lo) in enumerate(((0, 2, True), (0, 2, False), (1, 3, True), (1, 3, False))):
        f = builder.bitcast(builder.shuffle_vector(w[p], w[q], _unpack(lo, 4, 8)), _V16F)
        builder.store(builder.fmul(f, va), builder.gep(base, [_I32(m)]), align=4)


@intrinsic
def _q8_values64(typingctx, codes, a, out, signed):
    """map[codes[0..64)] * a at out[0..64) (codes a uint8 pointer, out a float32 one), on the
    signed or unsigned map (a literal bool)."""
    if not isinstance(signed, types.BooleanLiteral):
        return None
    sg = signed.literal_value

    def codegen(context, builder, sig, args):
        _values64_ir(builder, args[0], args[1], args[2], sg)
        return context.get_dummy_value()

    return types.none(codes, a, out, signed), codegen


def _values16_ir(builder, codes, a, out, signed):
    """fgd_q8_values16 of kernels/_quant.h (AVX-512 F without VBMI): map[codes[0..16)] * a at
    out[0..16), the 256 values in 16 registers, eight two-register permutes on the low 5 bits
    of a code and a tree of selects on bits 5, 6, 7."""
    c = builder.zext(builder.load(_vptr(builder, codes, _V16B), align=1), _V16I)
    qmap = [float(v) for v in (_MAP_S8 if signed else _MAP_U8)]
    t = [_permute2(builder, _vconst(_F32, qmap[32 * g:32 * g + 16]), c,
                   _vconst(_F32, qmap[32 * g + 16:32 * g + 32])) for g in range(8)]
    zero = ir.Constant(_V16I, None)
    for bit in (32, 64, 128):
        on = builder.icmp_unsigned("!=", builder.and_(c, _splat(_I32, bit)), zero)
        t = [builder.select(on, t[k + 1], t[k]) for k in range(0, len(t), 2)]
    builder.store(builder.fmul(t[0], _broadcast(builder, a)), _vptr(builder, out, _V16F),
                  align=4)


@intrinsic
def _q8_values16(typingctx, codes, a, out, signed):
    """map[codes[0..16)] * a at out[0..16) (codes a uint8 pointer, out a float32 one), on the
    signed or unsigned map (a literal bool)."""
    if not isinstance(signed, types.BooleanLiteral):
        return None
    sg = signed.literal_value

    def codegen(context, builder, sig, args):
        _values16_ir(builder, args[0], args[1], args[2], sg)
        return context.get_dummy_value()

    return types.none(codes, a, out, signed), codegen


@njit(inline="always", **_OPTIONS)
def _dequantize8_from(signed, qmap, c, a, x, i, m):
    """Values i..m-1 of a block (codes c, absmax a): 16 at a time from the map's registers
    (kernels/_quant.h's fgd_q8_values16, AVX-512 F), the tail as _dequantize8."""
    while i + 16 <= m:
        _q8_values16(offset(c, i), a, offset(x, i), signed)
        i += 16
    for j in range(i, m):
        x[j] = qmap[c[j]] * a


@njit(inline="always", **_OPTIONS)
def _dequantize8_planes(signed, qmap, codes, absmax, x, s, e):
    """kernels/_quant.h's fgd_q8_dequantize with VBMI: 64 values at a time from the byte
    planes, the rest as _dequantize8_from."""
    a = _pointer(absmax, np.float32)[s // _B8]
    c = _pointer(codes + s, np.uint8)
    m = e - s
    i = 0
    while i + 64 <= m:
        _q8_values64(offset(c, i), a, offset(x, i), signed)
        i += 64
    _dequantize8_from(signed, qmap, c, a, x, i, m)


@njit(inline="always", **_OPTIONS)
def _dequantize8_registers(signed, qmap, codes, absmax, x, s, e):
    """The same without VBMI."""
    _dequantize8_from(signed, qmap, _pointer(codes + s, np.uint8),
                      _pointer(absmax, np.float32)[s // _B8], x, 0, e - s)


@njit(inline="always", **_OPTIONS)
def _quantize8_vector(signed, grid, codes, absmax, x, s, e):
    """kernels/_quant.h's fgd_q8_codes: 16 codes at a time computed, not looked up (no clamp
    unless 1 / absmax is infinite), the tail as _quantize8."""
    m = e - s
    a = _absmax(x, m)
    _pointer(absmax, np.float32)[s // _B8] = a
    inv = _F1 / a
    c = _pointer(codes + s, np.uint8)
    i = 0
    if inv <= _FMAX:
        while i + 16 <= m:
            _q8_codes16(offset(x, i), inv, offset(c, i), signed, False)
            i += 16
    else:
        while i + 16 <= m:
            _q8_codes16(offset(x, i), inv, offset(c, i), signed, True)
            i += 16
    for j in range(i, m):
        c[j] = grid[np.uint32(_grid_index(x[j] * inv))]


#: the 4-bit paths (16 lanes, one-register permutes): AVX-512 F
VECTOR_Q4 = VECTOR_Q8

_MAP4 = {True: _MAP_S4, False: _MAP_U4}
_MID16_S4 = np.r_[_MID_S4, np.float32(1)].astype(np.float32)   # the 16th never probed


def _pack16(builder, c, out):
    """16 codes (<16 x i32>, each < 16) two a byte at out[0..8): (even << 4) | odd, the pairs
    in 64-bit lanes."""
    v8 = ir.VectorType(ir.IntType(64), 8)
    q = builder.bitcast(c, v8)
    q = builder.or_(builder.shl(q, _splat(ir.IntType(64), 4, 8)),
                    builder.lshr(q, _splat(ir.IntType(64), 32, 8)))
    builder.store(builder.trunc(q, ir.VectorType(_I8, 8)),
                  _vptr(builder, out, ir.VectorType(_I8, 8)), align=1)


def _cvtt(builder, y):
    """vcvttps2dq: a NaN converts to INT_MIN (LLVM's fptosi of a NaN would be poison)."""
    return _call(builder, "llvm.x86.avx512.mask.cvttps2dq.512", _V16I,
                 [y, ir.Constant(_V16I, None), _I16(-1), _I32(4)])


def _codes4_ir(builder, x, inv, out, signed):
    """fgd_q4_codes16 (signed: a binary search over the 15 midpoints in a register, each
    probe a permute of a copy of them shifted by step - 1) or fgd_q4_codes16_linear (the map
    (k + 1) / 16: ceil(16 v - 1.5) clamped to [0, 15], exact in the fused form) of
    kernels/_quant.h: the 16 codes of x[0..16) * inv, packed at out[0..8)."""
    v = builder.fmul(builder.load(_vptr(builder, x, _V16F), align=4), _broadcast(builder, inv))
    if signed:
        mid = [float(m) for m in _MID16_S4]
        t4 = _vconst(_F32, [mid[min(k + 3, 15)] for k in range(16)])
        t2 = _vconst(_F32, [mid[min(k + 1, 15)] for k in range(16)])
        perm = "llvm.x86.avx512.permvar.sf.512"
        c = builder.select(builder.fcmp_ordered("<", _splat(_F32, mid[7]), v),
                           _splat(_I32, 8), ir.Constant(_V16I, None))
        for table, step in ((t4, 4), (t2, 2), (_vconst(_F32, mid), 1)):
            probe = _call(builder, perm, _V16F, [table, c])
            c = builder.add(c, builder.select(builder.fcmp_ordered("<", probe, v),
                                              _splat(_I32, step), ir.Constant(_V16I, None)))
    else:
        t = _call(builder, "llvm.fma.v16f32", _V16F, [v, _splat(_F32, 16.0), _splat(_F32, -1.5)])
        top = _splat(_F32, 15.0)
        t = builder.select(builder.fcmp_ordered("<", top, t), top, t)     # vminps: NaN stays
        c = _cvtt(builder, _call(builder, "llvm.ceil.v16f32", _V16F, [t]))
        c = builder.select(builder.icmp_signed(">", c, ir.Constant(_V16I, None)), c,
                           ir.Constant(_V16I, None))
    _pack16(builder, c, out)


@intrinsic
def _q4_codes16(typingctx, x, inv, out, signed):
    """The 16 4-bit codes of x[0..16) * inv, two a byte at out[0..8), on the signed or the
    unsigned (linear) map (a literal bool)."""
    if not isinstance(signed, types.BooleanLiteral):
        return None
    sg = signed.literal_value

    def codegen(context, builder, sig, args):
        _codes4_ir(builder, args[0], args[1], args[2], sg)
        return context.get_dummy_value()

    return types.none(x, inv, out, signed), codegen


def _values16_4_ir(builder, packed, a, out, signed):
    """fgd_q4_dequantize's vector loop: 8 bytes -> 16 nibbles in element order (the high
    first), one permute of the 16-value map, times a, at out[0..16)."""
    v8 = ir.VectorType(_I8, 8)
    b = builder.load(_vptr(builder, packed, v8), align=1)
    hi = builder.lshr(b, _splat(_I8, 4, 8))
    lo = builder.and_(b, _splat(_I8, 15, 8))
    c = builder.shuffle_vector(hi, lo, _vconst(_I32, [k // 2 + (8 if k % 2 else 0)
                                                      for k in range(16)]))
    c = builder.zext(c, _V16I)
    qmap = _vconst(_F32, [float(m) for m in _MAP4[signed]])
    f = _call(builder, "llvm.x86.avx512.permvar.sf.512", _V16F, [qmap, c])
    builder.store(builder.fmul(f, _broadcast(builder, a)), _vptr(builder, out, _V16F), align=4)


@intrinsic
def _q4_values16(typingctx, packed, a, out, signed):
    """map[code] * a of the 16 codes in packed[0..8) at out[0..16) (a literal bool: the
    signed or the unsigned map)."""
    if not isinstance(signed, types.BooleanLiteral):
        return None
    sg = signed.literal_value

    def codegen(context, builder, sig, args):
        _values16_4_ir(builder, args[0], args[1], args[2], sg)
        return context.get_dummy_value()

    return types.none(packed, a, out, signed), codegen


@njit(inline="always", **_OPTIONS)
def _dequantize4_vector(signed, qmap, codes, absmax, x, s, e):
    a = _pointer(absmax, np.float32)[s // _B4]
    c = _pointer(codes + s // 2, np.uint8)
    m = e - s
    i = 0
    while i + 16 <= m:
        _q4_values16(offset(c, i // 2), a, offset(x, i), signed)
        i += 16
    for p in range(i // 2, m // 2):
        b = np.uint32(c[p])
        x[2 * p] = qmap[b >> np.uint32(4)] * a
        x[2 * p + 1] = qmap[b & np.uint32(15)] * a
    if m % 2:
        x[m - 1] = qmap[np.uint32(c[m // 2]) >> np.uint32(4)] * a


@njit(inline="always", **_OPTIONS)
def _quantize4_vector(signed, mid, codes, absmax, x, s, e):
    """16 codes at a time (_q4_codes16), the tail as _quantize4."""
    m = e - s
    a = _absmax(x, m)
    _pointer(absmax, np.float32)[s // _B4] = a
    inv = _F1 / a
    c = _pointer(codes + s // 2, np.uint8)
    i = 0
    while i + 16 <= m:
        _q4_codes16(offset(x, i), inv, offset(c, i // 2), signed)
        i += 16
    if i < m:
        q = stack_buffer(16, np.uint32)
        for j in range(i, m):
            q[j - i] = _nearest4(x[j] * inv, mid)
        for p in range((m - i) // 2):
            c[i // 2 + p] = np.uint8((q[2 * p] << np.uint32(4)) | q[2 * p + 1])
        if (m - i) % 2:
            c[m // 2] = np.uint8(q[m - i - 1] << np.uint32(4))


# One compiled function per format (not inlined in Numba's IR: each is typed and compiled
# once, LLVM inlines it into the kernel): the kernel's copy names the ones of its codes, so
# neither the other formats' branches nor their tables are in its code.

@njit(**_OPTIONS)
def dequantize_s8_portable(codes, absmax, x, s, e):
    _dequantize8(_MAP_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u8_portable(codes, absmax, x, s, e):
    _dequantize8(_MAP_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_s8_planes(codes, absmax, x, s, e):
    _dequantize8_planes(True, _MAP_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u8_planes(codes, absmax, x, s, e):
    _dequantize8_planes(False, _MAP_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_s8_registers(codes, absmax, x, s, e):
    _dequantize8_registers(True, _MAP_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u8_registers(codes, absmax, x, s, e):
    _dequantize8_registers(False, _MAP_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_s4_portable(codes, absmax, x, s, e):
    _dequantize4(_MAP_S4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u4_portable(codes, absmax, x, s, e):
    _dequantize4(_MAP_U4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_s4_vector(codes, absmax, x, s, e):
    _dequantize4_vector(True, _MAP_S4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def dequantize_u4_vector(codes, absmax, x, s, e):
    _dequantize4_vector(False, _MAP_U4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_s8_portable(codes, absmax, x, s, e):
    _quantize8(_GRID_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_u8_portable(codes, absmax, x, s, e):
    _quantize8(_GRID_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_s8_vector(codes, absmax, x, s, e):
    _quantize8_vector(True, _GRID_S8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_u8_vector(codes, absmax, x, s, e):
    _quantize8_vector(False, _GRID_U8, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_s4_portable(codes, absmax, x, s, e):
    _quantize4(_MID_S4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_u4_portable(codes, absmax, x, s, e):
    _quantize4(_MID_U4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_s4_vector(codes, absmax, x, s, e):
    _quantize4_vector(True, _MID_S4, codes, absmax, x, s, e)


@njit(**_OPTIONS)
def quantize_u4_vector(codes, absmax, x, s, e):
    _quantize4_vector(False, _MID_U4, codes, absmax, x, s, e)


@njit(inline="always", **_OPTIONS)
def nothing(codes, absmax, x, s, e):
    """The staging of an empty slot."""


#: the portable functions (tests check them too, wherever the vector ones are chosen)
DEQUANTIZE_PORTABLE = {Q8_SIGNED: dequantize_s8_portable, Q8_UNSIGNED: dequantize_u8_portable,
                       Q4_SIGNED: dequantize_s4_portable, Q4_UNSIGNED: dequantize_u4_portable}
QUANTIZE_PORTABLE = {Q8_SIGNED: quantize_s8_portable, Q8_UNSIGNED: quantize_u8_portable,
                     Q4_SIGNED: quantize_s4_portable, Q4_UNSIGNED: quantize_u4_portable}
dequantize_s8 = (dequantize_s8_planes if VECTOR_DQ8 else
                 dequantize_s8_registers if VECTOR_Q8 else dequantize_s8_portable)
dequantize_u8 = (dequantize_u8_planes if VECTOR_DQ8 else
                 dequantize_u8_registers if VECTOR_Q8 else dequantize_u8_portable)
quantize_s8 = quantize_s8_vector if VECTOR_Q8 else quantize_s8_portable
quantize_u8 = quantize_u8_vector if VECTOR_Q8 else quantize_u8_portable
dequantize_s4 = dequantize_s4_vector if VECTOR_Q4 else dequantize_s4_portable
dequantize_u4 = dequantize_u4_vector if VECTOR_Q4 else dequantize_u4_portable
quantize_s4 = quantize_s4_vector if VECTOR_Q4 else quantize_s4_portable
quantize_u4 = quantize_u4_vector if VECTOR_Q4 else quantize_u4_portable

#: code -> ``f(codes, absmax, x, s, e)``: elements s..e-1 (s a multiple of the block, e at
#: most one block on) of the state at the addresses ``codes`` (uint8) and ``absmax`` (float32,
#: one per block) to x[0..e-s) (a float32 pointer) as map[code] * absmax ...
DEQUANTIZE = {Q8_SIGNED: dequantize_s8, Q8_UNSIGNED: dequantize_u8, Q4_SIGNED: dequantize_s4,
              Q4_UNSIGNED: dequantize_u4}
#: ... and back: the block's new absmax, then its codes
QUANTIZE = {Q8_SIGNED: quantize_s8, Q8_UNSIGNED: quantize_u8, Q4_SIGNED: quantize_s4,
            Q4_UNSIGNED: quantize_u4}
