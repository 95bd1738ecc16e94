"""The ``<rule>_many`` kernels: many tensors, each role in its own storage format, one call.

kernels/CONTRACT.md ("Many tensors, any storage format") is the spec. Two bodies serve every
rule: ``_driver`` cuts the concatenation of the N tensors into one piece per thread (boundaries
on multiples of PIECE_ALIGN elements of it; serial below PARALLEL_MIN elements in all: one
piece) and walks the tensors each piece covers; ``_segment<n>`` (n state arrays) makes typed
views of one tensor's addresses (_views.View: loads to float32, stores with formats.py's
rounding) and runs the rule's element update ``STEP`` over the piece's part of it. ``STEP``
and ``CONSTS`` (the scalars, cast once) are the functions the rule's single kernel runs, so
the arithmetic of a rule is written once (``_<rule>_step`` in fastgd/_numba/<rule>.py).

The formats and the flags that switch arrays (use_acc, amsgrad, ...) are compile-time
constants: a loop that branches on a format per element, or that still mentions a stand-in
array, is not vectorised. So each combination gets its own copies of the two bodies, whose
globals hold the constants (CODES, FLAGS, REAL, ...: Numba freezes globals, types integers as
literals and folds the branches on them), compiled lazily on the first call that needs them.
A role the call does not use gets format NONE (never read or written), so its stand-in
address is not even in the code. Numba's disk cache keys an entry by qualified name, bytecode,
closure and signature, not by globals: each copy's qualified name spells its constants (and
serial/parallel, as _compile._renamed does), and the cache goes stale with any module of this
package (_compile._stale_with_package).

The rule's scalars reach the bodies as one tuple (floats and bools, normalised per call so
the signature, and the compiled entry point the call table keeps, never changes).
"""
import types as pytypes

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ._compile import _OPTIONS, PARALLEL_MIN, _run_parallel, _Runtime, _stale_with_package
from ._views import _STORAGE, BF16, BF16_SR, F16, F32, F64, NONE, View, _c32, _mix32

PIECE_ALIGN = 16
# The constants of a compiled copy (ManyKernel.specialise puts them in the copy's globals):
CODES = FLAGS = STEP = CONSTS = REAL = SEGMENT = None
_NAMES = {F32: "f32", BF16: "bf16", F16: "f16", F64: "f64", BF16_SR: "bf16sr", NONE: "none"}


@intrinsic
def _row_views(typingctx, codes, ptrs, k, keys):
    """(View(codes[0]), View(codes[1]), ...) of row k of the (N, R) address table ``ptrs``:
    role j of tensor k is at ptrs[k, j] (codes a tuple of literal ints, one per role)."""
    if not all(isinstance(c, types.IntegerLiteral) for c in codes):
        return None     # Numba tries without literals first, then with
    if keys.dtype != types.uint32 or ptrs.dtype != types.int64 or ptrs.ndim != 2:
        raise TypeError("_many kernels take int64 (N, R) addresses and uint32 keys")
    vts = [View(c.literal_value) for c in codes]
    tt = types.Tuple(vts)

    def codegen(context, builder, sig, args):
        _, table, kk, keyarr = args
        arr = context.make_array(sig.args[1])(context, builder, table)
        width = cgutils.unpack_tuple(builder, arr.shape)[1]
        row = builder.mul(kk, width)
        karr = context.make_array(sig.args[3])(context, builder, keyarr)
        key = builder.load(builder.gep(karr.data, [kk]))
        values = []
        for j, vt in enumerate(vts):
            addr = builder.load(builder.gep(arr.data, [builder.add(row, kk.type(j))]))
            v = cgutils.create_struct_proxy(vt)(context, builder)
            v.data = builder.inttoptr(addr, context.get_value_type(types.CPointer(_STORAGE[vt.code])))
            # each role its own random bits: formats.role_key (role 0, the param: the key)
            v.key = key if j == 0 or vt.code != BF16_SR else \
                _mix32(builder, builder.add(key, _c32((j * 0x85EBCA6B) & 0xFFFFFFFF)))
            values.append(v._getvalue())
        return context.make_tuple(builder, tt, values)

    return tt(codes, ptrs, types.intp, keys), codegen


def _segment1(ptrs, k, keys, a, b, c):
    """Elements a..b-1 of tensor k (a rule with one state array)."""
    v = _row_views(CODES, ptrs, k, keys)
    for i in range(a, b):
        v[4][i] = STEP(i, c, FLAGS, v[0], v[1], v[2], v[3])


def _segment2(ptrs, k, keys, a, b, c):
    """Elements a..b-1 of tensor k (a rule with two state arrays)."""
    v = _row_views(CODES, ptrs, k, keys)
    for i in range(a, b):
        v[5][i] = STEP(i, c, FLAGS, v[0], v[1], v[2], v[3], v[4])


def _segment3(ptrs, k, keys, a, b, c):
    """Elements a..b-1 of tensor k (a rule with three state arrays)."""
    v = _row_views(CODES, ptrs, k, keys)
    for i in range(a, b):
        v[6][i] = STEP(i, c, FLAGS, v[0], v[1], v[2], v[3], v[4], v[5])


_SEGMENTS = {1: _segment1, 2: _segment2, 3: _segment3}


def _driver(ptrs, offsets, keys, nthreads, grad_scale, maximize, scalars):
    """The N tensors' elements in ``nthreads`` pieces of their concatenation, one per prange
    iteration (the serial variant: one piece), each walked tensor by tensor."""
    c = CONSTS(REAL, grad_scale, maximize, scalars)
    n = offsets.shape[0] - 1
    total = offsets[n]
    per = (total + nthreads - 1) // nthreads
    per = (per + PIECE_ALIGN - 1) // PIECE_ALIGN * PIECE_ALIGN
    for t in prange(nthreads):
        lo = min(total, t * per)
        hi = min(total, lo + per)
        k = np.searchsorted(offsets, lo, side="right") - 1
        while k < n and offsets[k] < hi:
            start = offsets[k]
            SEGMENT(ptrs, k, keys, max(lo, start) - start, min(hi, offsets[k + 1]) - start, c)
            k += 1


class ManyKernel:
    """``rule_many(ptrs, offsets, fmts, keys, grad_scale, maximize, use_acc, *rule_scalars)``.

    name: the rule; consts(real, grad_scale, maximize, rule_scalars) -> c, the scalars of
    STEP; step(i, c, flags, param, grad, grad_acc, *states) -> the updated param value (step
    stores it in param[i]; the driver copies it to out[i]); n_states: the rule's state arrays;
    flags(use_acc, rule_scalars) -> (the flags tuple for step, the roles the call does not
    use). The call table maps (formats, flags, serial/parallel) to a compiled entry point.
    """

    def __init__(self, name, consts, step, n_states, flags):
        self.name = name
        self.__name__ = f"{name}_many"
        self.consts = consts
        self.step = step
        self.roles = 4 + n_states
        self.flags = flags
        self.table = {}
        self.dispatchers = {}       # the same keys: the driver's dispatcher (inspection, tests)
        self.segments = {}

    def specialise(self, codes, flags, parallel):
        """The compiled copies of _segment<n> and _driver for the role formats ``codes`` (out
        last), the STEP flags and the variant: the driver's dispatcher. The segment loop is its
        own (serial, non-inlined) function called from the prange body: Numba's parfor pass
        removes a store to an array it cannot trace to an argument (a view made inside the
        loop) as dead; outside a parfor no such pass runs."""
        spelled = "_".join(_NAMES[c] for c in codes) + "_" + "".join("01"[bool(f)] for f in flags)
        segment = self.segments.get((tuple(codes), flags))
        if segment is None:
            segment = self.segments[tuple(codes), flags] = self._copy(
                _SEGMENTS[self.roles - 4], f"{self.name}_many_segment_{spelled}", _OPTIONS,
                STEP=self.step, CODES=tuple(codes), FLAGS=tuple(bool(f) for f in flags))
        variant = "parallel" if parallel else "serial"
        return self._copy(_driver, f"{self.name}_many_{variant}_{spelled}",
                          dict(_OPTIONS, parallel=True) if parallel else _OPTIONS,
                          CONSTS=self.consts, SEGMENT=segment,
                          REAL=np.float64 if codes[0] == F64 else np.float32)

    @staticmethod
    def _copy(body, name, options, **constants):
        """njit of a copy of ``body`` named ``name`` whose globals add ``constants``."""
        g = dict(body.__globals__)
        g.update(constants)
        fn = pytypes.FunctionType(body.__code__, g, name)
        fn.__qualname__ = name
        fn.__doc__ = body.__doc__
        return _stale_with_package(njit(**options)(fn))

    def __call__(self, ptrs, offsets, fmts, keys, grad_scale, maximize, use_acc, *scalars):
        flags, unused = self.flags(use_acc, scalars)
        codes = fmts.tolist()
        for r in unused:
            codes[r] = NONE
        parallel = offsets[-1] >= PARALLEL_MIN and not _Runtime.serial_only
        key = (tuple(codes), flags, parallel)
        entry = self.table.get(key)
        if entry is None:
            # Compiled for floats and bools (the scalars' types normalised), then called through
            # the one overload's entry point, which skips the dispatcher's type resolution and
            # converts each later call's numbers itself (an int to float64, anything to bool).
            scalars = tuple(bool(s) if isinstance(s, (bool, np.bool_)) else float(s)
                            for s in scalars)
            fn = self.dispatchers[key] = self.specialise(codes, flags, parallel)
            self._run(fn, parallel, ptrs, offsets, keys, float(grad_scale), bool(maximize),
                      scalars)
            self.table[key] = next(iter(fn.overloads.values())).entry_point
            return
        self._run(entry, parallel, ptrs, offsets, keys, grad_scale, maximize, scalars)

    @staticmethod
    def _run(fn, parallel, ptrs, offsets, keys, gs, mx, scalars):
        if not parallel:
            fn(ptrs, offsets, keys, 1, gs, mx, scalars)
            return
        # one piece per thread: fastgd.set_num_threads's count, which _run_parallel applies,
        # else Numba's default (numba.get_num_threads costs 2.5 us; a piece count off from the
        # thread count changes only the balance, never a result)
        nthreads = _Runtime.num_threads or numba.config.NUMBA_NUM_THREADS
        _run_parallel(fn, ptrs, (offsets, keys, nthreads, gs, mx, scalars))


def many_kernel(name, consts, step, n_states, flags):
    return ManyKernel(name, consts, step, n_states, flags)
