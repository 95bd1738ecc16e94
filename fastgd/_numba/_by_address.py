"""Calling compiled Numba code by address: what the many kernels' drivers (_many.py) and the
single kernels' bodies (_single.py) share. A caller compiled once calls code compiled later
for the combination a call needs (a format combination's segment, a flag combination's loop),
so a new combination compiles only that code. Caller and callee must agree on the types:
the callee is compiled for the caller's types (``consts_type`` gives the scalars'), and the
caller compares ``type_tag_of`` its scalars with the tag the callee's table keeps before it
writes anything.
"""
import zlib

import numpy as np
from numba import types
from numba.core.extending import intrinsic
from numba.core.registry import cpu_target


def consts_type(consts, *arg_types):
    """The Numba type of ``consts(*args)`` for arguments of ``arg_types``, as a compiled caller
    types it (the type a kernel called by address gets its scalars in)."""
    ctx = cpu_target.typing_context
    ctx.refresh()
    return ctx.resolve_function_type(ctx.resolve_value_type(consts), arg_types, {}).return_type


def type_tag(numba_type):
    """A number for a Numba type, the same in every process (a CRC of its name)."""
    return zlib.crc32(str(numba_type).encode())


@intrinsic
def type_tag_of(typingctx, value):
    """type_tag of ``value``'s type, a constant of the compiled code (so code loaded from
    Numba's disk cache carries the tag of the type it was compiled with)."""
    tag = type_tag(value)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.int64, tag)

    return types.int64(value), codegen


def call_native(context, builder, address, argtys, values):
    """Codegen: call the native entry at ``address`` (an int64) of a function compiled for
    ``argtys``, returning nothing, with ``values``."""
    fnty = context.call_conv.get_function_type(types.void, argtys)
    fn = builder.inttoptr(address, fnty.as_pointer())
    context.call_conv.call_function(builder, fn, types.void, argtys, values)


def normalised_scalars(scalars):
    """A rule's scalars as the compiled code is compiled for them: bools, floats for the rest
    (so one entry point serves every later call: it converts each call's numbers itself)."""
    return tuple(bool(s) if isinstance(s, (bool, np.bool_)) else float(s) for s in scalars)
