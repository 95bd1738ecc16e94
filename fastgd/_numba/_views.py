"""Typed views of raw addresses in a storage format (fastgd/formats.py), for the _many kernels.

``_view(code, address, key)`` (code a compile-time constant) makes a ``View(code)``: an array
look-alike over the address whose ``v[i]`` loads element i to float32 (float64 for code 3),
exactly, and ``v[i] = x`` stores x in the format with formats.py's rounding, bit for bit. The
rule's element update (``_<rule>_step`` in each rule's module) is written once against
``x[i]`` reads and writes; given NumPy arrays it is the single kernel, given views the many
kernel. Each load and store is a few LLVM instructions emitted in place (no call), all 32-bit
integer or float ops, so LLVM's loop vectoriser turns them into AVX-512 lanes:

- bfloat16 load: bits << 16. Store: round to nearest even, NaN made quiet (sign kept), zero
  and subnormals flushed to a signed zero (formats.to_bfloat16). Where the target has
  AVX-512 BF16 that is VCVTNEPS2BF16 (LLVM's ``fptrunc`` to ``bfloat``; see _bf16_store),
  else integer arithmetic. The AdamW step stores three bfloat16 roles an element: in integer
  ops that is ~30 vector instructions per 16 lanes, which on its own made all-bf16 AdamW
  compute-bound (0.72 ns an element in cache, 0.52 of the stream's bandwidth at 16M, one
  thread), against 3 per 16 lanes with the instruction.
- float16: LLVM's ``fpext``/``fptrunc`` on ``half`` (F16C's vcvtph2ps/vcvtps2ph on x86): IEEE
  round to nearest even, subnormal halves kept, NaN stays NaN (Numba has no float16 type; the
  half exists only inside the load/store).
- bfloat16 with stochastic rounding (code 4): (u + r) >> 16 with r formats.sr_bits (the high
  16 bits of sr_hash(key ^ (i * 0x9E3779B9)) times the role's multiplier), i the index in the
  view (its tensor); NaN and tiny as code 1.
- code -1 (absent): loads give 0, stores do nothing; a role the call does not use gets it, so
  its stand-in address never appears in the loop (LLVM's runtime alias checks would then fail
  on the stand-in aliasing a used array and leave the loop scalar, as in the single kernels).
"""
import functools
import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, register_model
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global, signature

F32, BF16, F16, F64, BF16_SR, NONE = 0, 1, 2, 3, 4, -1

_STORAGE = {F32: types.float32, BF16: types.uint16, F16: types.uint16, F64: types.float64,
            BF16_SR: types.uint16, NONE: types.uint8}
GOLDEN = 0x9E3779B9


class View(types.Type):
    """The Numba type of a view of one role of one tensor in storage format ``code``."""

    def __init__(self, code):
        self.code = int(code)
        self.real = types.float64 if self.code == F64 else types.float32
        super().__init__(name=f"fastgd.View({self.code})")

    @property
    def key(self):
        return self.code


@register_model(View)
class _ViewModel(models.StructModel):
    def __init__(self, dmm, fe_type):
        # key: the tensor's stochastic-rounding key; mult: the role's formats.role_multiplier
        members = [("data", types.CPointer(_STORAGE[fe_type.code])), ("key", types.uint32),
                   ("mult", types.uint32)]
        super().__init__(dmm, fe_type, members)


@intrinsic
def _view(typingctx, code, address, key):
    """View(code) of ``address`` (an int64), with stochastic-rounding key ``key`` (uint32)."""
    if not isinstance(code, types.IntegerLiteral):
        return None
    vt = View(code.literal_value)

    def codegen(context, builder, sig, args):
        _, addr, k = args
        v = cgutils.create_struct_proxy(vt)(context, builder)
        v.data = builder.inttoptr(addr, context.get_value_type(types.CPointer(_STORAGE[vt.code])))
        v.key = context.cast(builder, k, sig.args[2], types.uint32)
        v.mult = _c32(1)
        return v._getvalue()

    return vt(code, address, key), codegen


@infer_global(operator.getitem)
class _GetItem(AbstractTemplate):
    def generic(self, args, kws):
        if len(args) == 2 and isinstance(args[0], View) and isinstance(args[1], types.Integer):
            return signature(args[0].real, args[0], types.intp)


@infer_global(operator.setitem)
class _SetItem(AbstractTemplate):
    def generic(self, args, kws):
        if (len(args) == 3 and isinstance(args[0], View) and isinstance(args[1], types.Integer)
                and isinstance(args[2], (types.Number, types.Boolean))):
            return signature(types.none, args[0], types.intp, args[0].real)


_I16, _I32 = ir.IntType(16), ir.IntType(32)


def _c32(x):
    return ir.Constant(_I32, x)


@lower_builtin(operator.getitem, View, types.intp)
def _load(context, builder, sig, args):
    vt = sig.args[0]
    v = cgutils.create_struct_proxy(vt)(context, builder, value=args[0])
    if vt.code == NONE:
        return context.get_constant(types.float32, 0.0)
    x = builder.load(builder.gep(v.data, [args[1]]))
    if vt.code in (F32, F64):
        return x
    if vt.code == F16:
        return builder.fpext(builder.bitcast(x, ir.HalfType()), ir.FloatType())
    return builder.bitcast(builder.shl(builder.zext(x, _I32), _c32(16)), ir.FloatType())


def _sr_bits(builder, key, i, mult):
    """The 16 random bits of element i of a role with key ``key`` and multiplier ``mult``:
    (sr_hash(key ^ (i * GOLDEN)) * mult) >> 16 (formats.sr_bits). The hash is the same in every
    stochastically rounded role of the element (LLVM computes it once) and mix32's first step
    x ^ (x >> 16) distributes over x = key ^ g (xor and shifts are linear over GF(2)), so its
    key half is loop-invariant (hoisted)."""
    g = builder.mul(builder.trunc(i, _I32), _c32(GOLDEN))
    x = builder.xor(builder.xor(key, builder.lshr(key, _c32(16))),
                    builder.xor(g, builder.lshr(g, _c32(16))))
    x = builder.mul(x, _c32(0x7FEB352D))
    x = builder.xor(x, builder.lshr(x, _c32(15)))
    x = builder.mul(x, _c32(0x846CA68B))
    return builder.lshr(builder.mul(x, mult), _c32(16))


def _tiny(builder, u):
    """Whether float32 bits u are a zero or a subnormal (exponent 0)."""
    return builder.icmp_unsigned("==", builder.and_(u, _c32(0x7F800000)), _c32(0))


def _bf16_special(builder, x, u, r):
    """The stored bfloat16 bits (i16) of float32 x (bits u) given r, the i32 whose high half is
    the rounded result of a finite normal x: a NaN quieted (sign kept), a zero or subnormal
    flushed to a signed zero. Chosen on the 32-bit values and truncated once, the NaN test a
    float compare (one vector instruction, not an and and a compare)."""
    out = builder.select(_tiny(builder, u), builder.and_(u, _c32(0x80000000)), r)
    out = builder.select(builder.fcmp_unordered("uno", x, x), builder.or_(u, _c32(0x00400000)), out)
    return builder.trunc(builder.lshr(out, _c32(16)), _I16)


class _BFloat(ir.types._BaseFloatType):
    """LLVM's ``bfloat`` (llvmlite.ir has no such type)."""
    null = "0.0"
    intrinsic_name = "bf16"

    def __str__(self):
        return "bfloat"


_BFloat._create_instance()


@functools.lru_cache(maxsize=None)
def _has_bf16_convert(features):
    """Whether LLVM lowers every ``fptrunc float to bfloat`` (vector and scalar) to
    VCVTNEPS2BF16 for a target with these features (else it calls __truncsfbf2, which the JIT
    may not even link)."""
    flags = set(features.split(","))
    return "+avx512bf16" in flags and "+avx512vl" in flags


def _bf16_store(context, builder, x, u):
    """The stored bfloat16 bits of float32 x (bits u), round to nearest even (code 1).

    VCVTNEPS2BF16's rounding is formats.py's, bit for bit (the definition adopted it: NaN
    (u >> 16) | 0x40, zero and subnormals to a signed zero, else RNE). LLVM's fptrunc is
    IEEE's, which keeps subnormals, so they are flushed before it: the result then never
    depends on how LLVM lowers the fptrunc. Before it, not after: without the select LLVM's
    vectoriser took 4 lanes instead of 16 for AdamW, with it on the 16-bit result AdamW ran
    2.7x slower in cache (measured on Zen 4). The features are those the module is compiled for
    (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES included), which also key Numba's cache."""
    if _has_bf16_convert(context.codegen().magic_tuple()[2]):
        flushed = builder.select(_tiny(builder, u), builder.and_(u, _c32(0x80000000)), u)
        half = builder.fptrunc(builder.bitcast(flushed, ir.FloatType()), _BFloat())
        return builder.bitcast(half, _I16)
    lsb = builder.and_(builder.lshr(u, _c32(16)), _c32(1))
    return _bf16_special(builder, x, u, builder.add(builder.add(u, _c32(0x7FFF)), lsb))


@lower_builtin(operator.setitem, View, types.intp, types.float32)
@lower_builtin(operator.setitem, View, types.intp, types.float64)
def _store(context, builder, sig, args):
    vt = sig.args[0]
    if vt.code == NONE:
        return context.get_dummy_value()
    v = cgutils.create_struct_proxy(vt)(context, builder, value=args[0])
    i, x = args[1], args[2]
    ptr = builder.gep(v.data, [i])
    if vt.code in (F32, F64):
        builder.store(x, ptr)
    elif vt.code == F16:
        builder.store(builder.bitcast(builder.fptrunc(x, ir.HalfType()), _I16), ptr)
    elif vt.code == BF16:
        builder.store(_bf16_store(context, builder, x, builder.bitcast(x, _I32)), ptr)
    else:  # BF16_SR: (u + r) >> 16, r = formats.sr_bits of the view's role
        u = builder.bitcast(x, _I32)
        r = _sr_bits(builder, v.key, i, v.mult)
        builder.store(_bf16_special(builder, x, u, builder.add(u, r)), ptr)
    return context.get_dummy_value()


def format_paths():
    """How this process's Numba target stores bfloat16 (for ``fastgd info``)."""
    from numba.core.registry import cpu_target
    if _has_bf16_convert(cpu_target.target_context.codegen().magic_tuple()[2]):
        return "bfloat16: AVX-512 BF16 (vcvtneps2bf16)"
    return "bfloat16: integer rounding"
