"""The single kernels ``<rule>(param, grad, grad_acc, *states, grad_scale, maximize, use_acc,
*rule_scalars)``: one contiguous array per role, all of param's dtype (float32 or float64),
the twins of kernels/<rule>.pyx.

The flags that choose which arrays a rule's update touches (use_acc, amsgrad, momentum, ...)
must be compile-time constants of its loop: a loop that branches on them per element, or still
mentions an unused array (a stand-in aliasing a used one), fails LLVM's runtime alias check and
runs scalar (0.35-0.45 of bandwidth at 16M float32, measured), and with the step inlined a
serial loop with runtime flags outgrows LLVM's unswitching budget and stays scalar. So each
flag combination has its own loop: a copy of ``_loop<n>`` (n state arrays) running the rule's
element update ``STEP`` (the one its ``<rule>_many`` kernel runs) with ``FLAGS`` frozen in.

A rule's kernel body (``_<rule>`` in fastgd/_numba/<rule>.py) takes the kernel's arguments and,
last, ``loops`` (the loop table's address, which the kernel appends: the body's docstring is the
kernel's and leaves it out), casts its scalars once (its CONSTS) and returns what ``run_loop``
returns for the index of its flags (``flag_index``): the loop is called
by address from a table the Python side fills, so compiling the body compiles no loop, and a
loop is compiled (serial or parallel) on the first call that needs it. RMSprop's first call
compiled all eight loops of its variant (an empty cache, float32, this Xeon: 3.1 s serial,
9.5 s parallel); now one (1.6 s and 1.3 s). Numba caches the body and each loop on disk.

Fast path: the body's entry point for C-contiguous arrays of the dtype (the one the validated
calls use: calling it skips the dispatcher's type resolution, 1.15 us a call with 18 arguments
against 0.6 us), called with the address of the loop table of the variant; it returns RAN, or
the index of a loop not compiled yet (nothing written), which the slow path compiles. Calling
the entry point is safe because fastgd._validate has checked every array (one float dtype, 1-D,
C-contiguous) and the entry point converts any number to the float or bool it was compiled for.
Against the loops inlined in the body (before), a 1,000-element step costs ~0.17 us more (the
call, the returned status); large steps run the same loops.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

from ._by_address import (call_native, consts_type, normalised_scalars, type_tag,
                          type_tag_of)
from ._compile import _OPTIONS, PARALLEL_MIN, _run_parallel, _Runtime, _stale_with_package, \
    copy_with_constants

STEP = FLAGS = None       # the constants of a loop's copy (SingleKernel.loop)
RAN, WRONG_TAG = -1, -2   # run_loop's answers besides a missing loop's index


def _loop1(param, grad, grad_acc, s0, c):
    for i in prange(param.shape[0]):
        STEP(i, c, FLAGS, param, grad, grad_acc, s0)


def _loop2(param, grad, grad_acc, s0, s1, c):
    for i in prange(param.shape[0]):
        STEP(i, c, FLAGS, param, grad, grad_acc, s0, s1)


def _loop3(param, grad, grad_acc, s0, s1, s2, c):
    for i in prange(param.shape[0]):
        STEP(i, c, FLAGS, param, grad, grad_acc, s0, s1, s2)


_LOOPS = {1: _loop1, 2: _loop2, 3: _loop3}


@intrinsic
def _load_i64(typingctx, address, k):
    """Entry k of the int64 array at ``address``."""
    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load(builder.gep(ptr, [args[1]]))

    return types.int64(types.int64, types.intp), codegen


@intrinsic
def _call_loop(typingctx, address, arrays, c):
    """Call the compiled loop at ``address`` with (*arrays, c): the native entry of a loop
    compiled for exactly these types (SingleKernel._compile_loop; run_loop checks c's). The
    arrays go without their reference-counted owner (meminfo NULL, which Numba's incref and
    decref skip): a function taking an array increments and decrements its count, two atomic
    operations an array a call (+0.25 us on a 1,000-element RMSprop step, measured); the
    caller holds the arrays for the call."""
    argtys = (*arrays.types, c)

    def codegen(context, builder, sig, args):
        values = []
        for t, v in zip(arrays.types, cgutils.unpack_tuple(builder, args[1])):
            a = context.make_array(t)(context, builder, v)
            a.meminfo = cgutils.get_null_value(a.meminfo.type)
            values.append(a._getvalue())
        call_native(context, builder, args[0], argtys, values + [args[2]])
        return context.get_dummy_value()

    return types.void(types.int64, arrays, c), codegen


@njit(inline="always", **_OPTIONS)
def flag_index(a, b=False, c=False):
    """The index of a loop in its table: the flags as bits, the first the lowest."""
    return int(bool(a)) + 2 * int(bool(b)) + 4 * int(bool(c))


@njit(inline="always", **_OPTIONS)
def run_loop(table, k, c, arrays):
    """Run loop k of the table at address ``table`` (entry 0: type_tag of the consts type
    its loops take; entry k + 1: loop k's address, 0 until compiled) over ``arrays`` with
    the scalars ``c``: RAN, or k if that loop is not compiled yet, or WRONG_TAG (nothing
    written in either case)."""
    if _load_i64(table, 0) != type_tag_of(c):
        return WRONG_TAG
    address = _load_i64(table, k + 1)
    if address == 0:
        return k
    _call_loop(address, arrays, c)
    return RAN


def _normalised(args, n_arrays):
    """A call's arguments (after param) as the body is compiled for them: the arrays,
    grad_scale a float, maximize and use_acc bools, the rule's scalars normalised."""
    return (*args[:n_arrays - 1], float(args[n_arrays - 1]), bool(args[n_arrays]),
            bool(args[n_arrays + 1]), *normalised_scalars(args[n_arrays + 2:]))


class SingleKernel:
    """The compiled parts of one rule's single kernel: its body (one dispatcher, serial: the
    loops hold the prange), the loops' copies, the loop tables and the entry points."""

    def __init__(self, body, consts, step, n_states, n_flags):
        self.name = body.__name__.lstrip("_")
        self.body = _stale_with_package(njit(**_OPTIONS)(body))
        self.consts, self.step, self.n_states, self.n_flags = consts, step, n_states, n_flags
        self.loops = {}         # (flags, parallel): the loop copy's dispatcher
        self.tables = {}        # (itemsize, parallel): the loop table (int64 array)
        self.entries = {}       # itemsize: (entry point, serial table address, parallel's)
        self.c_types = {}       # itemsize: the consts type the body computes

    def loop(self, flags, parallel):
        """The dispatcher of the copy of _loop<n> for ``flags``, serial or parallel."""
        disp = self.loops.get((flags, parallel))
        if disp is None:
            variant = "parallel" if parallel else "serial"
            spelled = "".join("01"[f] for f in flags)
            options = dict(_OPTIONS, parallel=True) if parallel else _OPTIONS
            disp = self.loops[flags, parallel] = copy_with_constants(
                _LOOPS[self.n_states], f"{self.name}_loop_{variant}_{spelled}", options,
                STEP=self.step, FLAGS=flags)
        return disp

    def slow_call(self, param, args):
        """A call the fast path could not finish: the body compiled for the dtype (once),
        then each loop it asks for, then run."""
        parallel = not (param.shape[0] < PARALLEL_MIN or _Runtime.serial_only)
        entry = self.entries.get(param.itemsize) or self._compile_body(param, args)
        if parallel and entry[2] is None:
            # a parallel loop called by address finds the threading layer launched only if
            # something launched it (a parallel dispatcher does, on its first call); not
            # before a parallel call: a process that launched it cannot give a forked child
            # threads (_compile._Runtime)
            _launch_threads()
            entry = self.entries[param.itemsize] = (
                entry[0], entry[1], self.tables[param.itemsize, True].ctypes.data)
        while True:
            if parallel:
                r = _run_parallel(entry[0], param, (*args, entry[2]))
            else:
                r = entry[0](param, *args, entry[1])
            if r == RAN:
                return
            if r == WRONG_TAG:      # cannot happen: the table is made for the body's types
                raise TypeError(f"{self.name}: the loop table was made for other scalar types")
            self._compile_loop(param, args, r, parallel)

    def _compile_body(self, param, args):
        n = 3 + self.n_states
        sig = tuple(map(numba.typeof, (param, *_normalised(args, n), 0)))
        self.body.compile(sig)
        cres = self.body.overloads[sig]
        real = types.NumberClass(numba.from_dtype(param.dtype))
        c_type = consts_type(self.consts, real, sig[n], sig[n + 1], types.Tuple(sig[n + 3:-1]))
        self.c_types[param.itemsize] = (sig[:n], c_type)
        addresses = []
        for parallel in (False, True):
            table = np.zeros(1 + 2 ** self.n_flags, np.int64)
            table[0] = type_tag(c_type)
            self.tables[param.itemsize, parallel] = table
            addresses.append(table.ctypes.data)
        # the parallel table's address is entered by the first parallel call (slow_call)
        entry = self.entries[param.itemsize] = (cres.entry_point, addresses[0], None)
        return entry

    def _compile_loop(self, param, args, k, parallel):
        flags = tuple(bool(k >> j & 1) for j in range(self.n_flags))
        array_types, c_type = self.c_types[param.itemsize]
        disp = self.loop(flags, parallel)
        sig = (*array_types, c_type)
        disp.compile(sig)
        cres = disp.overloads[sig]
        self.tables[param.itemsize, parallel][k + 1] = cres.library.get_pointer_to_function(
            cres.fndesc.llvm_func_name)


def single_kernel(body, consts, step, n_states, n_flags):
    """The kernel ``<rule>(param, *args)`` whose body is ``body`` (see the module docstring);
    its ``compiled`` attribute is the SingleKernel."""
    compiled = SingleKernel(body, consts, step, n_states, n_flags)
    entries, slow_call = compiled.entries, compiled.slow_call

    def kernel(param, *args):
        entry = entries.get(param.itemsize)
        if entry is not None:
            if param.shape[0] < PARALLEL_MIN or _Runtime.serial_only:
                if entry[0](param, *args, entry[1]) == RAN:
                    return
            elif entry[2] is not None and \
                    _run_parallel(entry[0], param, (*args, entry[2])) == RAN:
                return
        slow_call(param, args)

    kernel.__name__ = compiled.name
    kernel.__doc__ = body.__doc__
    kernel.compiled = compiled
    return kernel
