"""Typed views of raw addresses in a storage format (fastgd/formats.py), for the _many kernels.

``_view(code, address, key)`` (code a compile-time constant) makes a ``View(code)``: an array
look-alike over the address whose ``v[i]`` loads element i to float32 (float64 for code 3),
exactly, and ``v[i] = x`` stores x in the format with formats.py's rounding, bit for bit. The
rule's element update (``_<rule>_step`` in each rule's module) is written once against
``x[i]`` reads and writes; given NumPy arrays it is the single kernel, given views the many
kernel. Each load and store is a few LLVM instructions emitted in place (no call), all 32-bit
integer or float ops, so LLVM's loop vectoriser turns them into AVX-512 lanes:

- bfloat16 load: bits << 16. Store: round to nearest even in integer arithmetic, NaN made quiet
  (sign kept), zero and subnormals flushed to a signed zero (formats.to_bfloat16).
- float16: LLVM's ``fpext``/``fptrunc`` on ``half`` (F16C's vcvtph2ps/vcvtps2ph on x86): IEEE
  round to nearest even, subnormal halves kept, NaN stays NaN (Numba has no float16 type; the
  half exists only inside the load/store).
- bfloat16 with stochastic rounding (code 4): (u + r) >> 16 with r the high 16 bits of
  mix32(key ^ (i * 0x9E3779B9)), i the index in the view (its tensor); NaN and tiny as code 1.
- code -1 (absent): loads give 0, stores do nothing; a role the call does not use gets it, so
  its stand-in address never appears in the loop (LLVM's runtime alias checks would then fail
  on the stand-in aliasing a used array and leave the loop scalar, as in the single kernels).
"""
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
        members = [("data", types.CPointer(_STORAGE[fe_type.code])), ("key", types.uint32)]
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


def _mix32(builder, x):
    """formats.mix32 (lowbias32) on an i32."""
    x = builder.xor(x, builder.lshr(x, _c32(16)))
    x = builder.mul(x, _c32(0x7FEB352D))
    x = builder.xor(x, builder.lshr(x, _c32(15)))
    x = builder.mul(x, _c32(0x846CA68B))
    return builder.xor(x, builder.lshr(x, _c32(16)))


def _bf16_bits(builder, u, rounded):
    """The stored bfloat16 bits of float32 bits u (i32): NaN quieted, zero/subnormal flushed to
    a signed zero, else ``rounded`` (an i32 whose low 16 bits are the result)."""
    hi = builder.lshr(u, _c32(16))
    nan = builder.icmp_unsigned(">", builder.and_(u, _c32(0x7FFFFFFF)), _c32(0x7F800000))
    tiny = builder.icmp_unsigned("==", builder.and_(u, _c32(0x7F800000)), _c32(0))
    out = builder.select(tiny, builder.and_(hi, _c32(0x8000)), rounded)
    out = builder.select(nan, builder.or_(hi, _c32(0x40)), out)
    return builder.trunc(out, _I16)


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
    else:
        u = builder.bitcast(x, _I32)
        if vt.code == BF16:
            lsb = builder.and_(builder.lshr(u, _c32(16)), _c32(1))
            r = builder.add(builder.add(u, _c32(0x7FFF)), lsb)
        else:  # BF16_SR: r = mix32(key ^ (i * GOLDEN mod 2**32)) >> 16
            h = _mix32(builder, builder.xor(v.key, builder.mul(builder.trunc(i, _I32), _c32(GOLDEN))))
            r = builder.add(u, builder.lshr(h, _c32(16)))
        builder.store(_bf16_bits(builder, u, builder.lshr(r, _c32(16))), ptr)
    return context.get_dummy_value()
