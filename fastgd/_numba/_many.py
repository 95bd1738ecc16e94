"""The ``<rule>_many`` kernels: many tensors, each role in its own storage format, one call.

kernels/CONTRACT.md ("Many tensors, any storage format" and "Quantized states") is the spec.
Two bodies serve every rule: ``_driver`` cuts the concatenation of the N tensors into one
piece per thread (each boundary moved up to a multiple of ALIGN elements of the tensor it
falls in; serial below PARALLEL_MIN elements in all: one piece) and walks the tensors each
piece covers; ``_segment<n>`` (n state arrays) makes typed
views of one tensor's addresses (_views.View: loads to float32, stores with formats.py's
rounding) and runs the rule's element update ``STEP`` over the piece's part of it. ``STEP``
and ``CONSTS`` (the scalars, cast once) are the functions the rule's single kernel runs, so
the arithmetic of a rule is written once (``_<rule>_step`` in fastgd/_numba/<rule>.py).

The formats and the flags that switch arrays (use_acc, amsgrad, ...) are compile-time
constants: a loop that branches on a format per element, or that still mentions a stand-in
array, is not vectorised. So each combination gets its own copy of the segment body (the
driver, one per rule and computing type, calls it by address), whose
globals hold the constants (CODES, FLAGS, REAL, ...: Numba freezes globals, types integers as
literals and folds the branches on them), compiled lazily on the first call that needs them.
A role the call does not use gets format NONE (never read or written), so its stand-in
address is not even in the code. Numba's disk cache keys an entry by qualified name, bytecode,
closure and signature, not by globals: each copy's qualified name spells its constants (and
serial/parallel, as _compile._renamed does), and the cache goes stale with any module of this
package (_compile._stale_with_package).

Quantized states (codes 5-8) are the same layer's business, no rule's: with any, the segment
is ``_qsegment<n>``, which walks its part of the tensor a block at a time (256 elements for
8 bits, 128 for 4; pieces then cut on block multiples, ALIGN = the block, so a block is never
split between threads): each staged role's block is dequantized into a float32 buffer on the
stack (_quant.py, bit for bit fastgd/quant.py), ``_block_views`` gives the STEP a plain
float32 View of it at the tensor's own element indices (so stochastic rounding of the other
roles sees the same i), the STEP runs unchanged, then each staged block's absmax and codes
are stored. A stand-in in a quantized role (AMSGrad's vmax at exp_avg_sq) is a role the call
does not use, NONE, so it is never staged: each staged address is a distinct array, and the
array the reference shares between the two roles is staged once. The format checks
(ValueError) run in Python, on a call table miss, before any compiled code.

The rule's scalars reach the bodies as one tuple (floats and bools, normalised per call so
the signature, and the compiled entry point the call table keeps, never changes).
"""
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .. import formats
from . import _quant
from ._by_address import (call_native, consts_type, normalised_scalars, type_tag,
                          type_tag_of)
from ._compile import (_OPTIONS, PARALLEL_MIN, _run_parallel, _Runtime, copy_with_constants,
                       wide_vectors)
from ._views import _STORAGE, BF16, BF16_SR, F16, F32, F64, NONE, View, _c32

PIECE_ALIGN = 16
# The constants of a compiled copy (ManyKernel.segment and .driver put them in its globals);
# with quantized states also BLOCK (elements of a block), BUFFER (the staging buffer's
# floats: BLOCK per staged role), C<j> and A<j> (the columns of the j-th staged role's codes
# and absmax), STAGE and UNSTAGE (copies of _stage: dequantize and quantize each staged role,
# Q<j> the j-th's function)
CODES = FLAGS = STEP = CONSTS = REAL = BLOCK = STAGE = UNSTAGE = None
Q0 = Q1 = Q2 = C0 = C1 = C2 = A0 = A1 = A2 = BUFFER = None
_NAMES = {F32: "f32", BF16: "bf16", F16: "f16", F64: "f64", BF16_SR: "bf16sr", NONE: "none",
          5: "q8s", 6: "q8u", 7: "q4s", 8: "q4u"}
_MAX_SLOTS = 3
_INLINE = dict(_OPTIONS, inline="always")


def _literal_codes(codes):
    if not all(isinstance(c, types.IntegerLiteral) for c in codes):
        return None     # Numba tries without literals first, then with
    return [c.literal_value for c in codes]


def _views_codegen(context, builder, vts, values_of, table_t, table, kk, keys_t, keyarr):
    """The tuple of views ``vts`` of row kk of the address table: view j's data is the pointer
    ``values_of(j)``, or where that is None the address in column j."""
    arr = context.make_array(table_t)(context, builder, table)
    width = cgutils.unpack_tuple(builder, arr.shape)[1]      # the table's own width: R or R + S
    row = builder.mul(kk, width)
    karr = context.make_array(keys_t)(context, builder, keyarr)
    key = builder.load(builder.gep(karr.data, [kk]))
    values = []
    for j, vt in enumerate(vts):
        v = cgutils.create_struct_proxy(vt)(context, builder)
        pt = context.get_value_type(types.CPointer(_STORAGE[vt.code]))
        data = values_of(j)
        if data is None:
            addr = builder.load(builder.gep(arr.data, [builder.add(row, kk.type(j))]))
            data = builder.inttoptr(addr, pt)
        v.data = builder.bitcast(data, pt)
        # each role its own random bits: the tensor's key, the column's multiplier
        v.key = key
        v.mult = _c32(formats.role_multiplier(j) if vt.code == BF16_SR else 1)
        values.append(v._getvalue())
    return context.make_tuple(builder, types.Tuple(vts), values)


def _check_table(ptrs, keys):
    if keys.dtype != types.uint32 or ptrs.dtype != types.int64 or ptrs.ndim != 2:
        raise TypeError("_many kernels take int64 (N, R) addresses and uint32 keys")


@intrinsic
def _row_views(typingctx, codes, ptrs, k, keys):
    """(View(codes[0]), View(codes[1]), ...) of row k of the (N, R) (or (N, R + S)) address
    table ``ptrs``: role j of tensor k is at ptrs[k, j] (codes a tuple of literal ints, one per
    role)."""
    cs = _literal_codes(codes)
    if cs is None:
        return None
    _check_table(ptrs, keys)
    vts = [View(c) for c in cs]

    def codegen(context, builder, sig, args):
        return _views_codegen(context, builder, vts, lambda j: None, sig.args[1], args[1],
                              args[2], sig.args[3], args[3])

    return types.Tuple(vts)(codes, ptrs, types.intp, keys), codegen


@intrinsic
def _block_views(typingctx, codes, ptrs, k, keys, stage, base):
    """_row_views, but each quantized role (codes 5-8) a float32 view of its staged block: the
    n-th quantized role's element i (an index in the tensor, i >= base) is
    stage[n * block + i - base], so the rule's element code, and the stochastic rounding of the
    other roles, see the tensor's own indices."""
    cs = _literal_codes(codes)
    if cs is None:
        return None
    _check_table(ptrs, keys)
    quantized = [j for j, c in enumerate(cs) if c in _quant.QUANTIZED]
    block = _quant.BLOCK[cs[quantized[0]]] if quantized else 0
    vts = [View(F32 if c in _quant.QUANTIZED else c) for c in cs]

    def codegen(context, builder, sig, args):
        intp = context.get_value_type(types.intp)

        def staged(j):
            if j not in quantized:
                return None
            shift = builder.sub(intp(quantized.index(j) * block), args[5])
            return builder.gep(args[4], [shift])        # not inbounds: only i >= base is read

        return _views_codegen(context, builder, vts, staged, sig.args[1], args[1], args[2],
                              sig.args[3], args[3])

    return types.Tuple(vts)(codes, ptrs, types.intp, keys, stage, types.intp), codegen


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


def _stage(q, stage, s, e):
    """Block s..e-1 of each staged role to its part of ``stage`` (BLOCK floats a role), as
    float32: Q<j> is the j-th slot's dequantize (_quant.nothing for an empty slot), q[2j] and
    q[2j + 1] the addresses of its codes and absmax. UNSTAGE is a copy whose Q<j> are the
    slots' quantize: each block back to its absmax and codes."""
    Q0(q[0], q[1], stage, s, e)
    Q1(q[2], q[3], _quant.offset(stage, BLOCK), s, e)
    Q2(q[4], q[5], _quant.offset(stage, 2 * BLOCK), s, e)


def _qsegment1(ptrs, k, keys, a, b, c):
    """Elements a..b-1 of tensor k (a a multiple of BLOCK) block by block, its quantized
    states staged as float32 (a rule with one state array)."""
    stage = _quant.stack_buffer(BUFFER, np.float32)
    q = (ptrs[k, C0], ptrs[k, A0], ptrs[k, C1], ptrs[k, A1], ptrs[k, C2], ptrs[k, A2])
    for s in range(a, b, BLOCK):
        e = min(s + BLOCK, b)
        STAGE(q, stage, s, e)
        v = _block_views(CODES, ptrs, k, keys, stage, s)
        for i in range(s, e):
            v[4][i] = STEP(i, c, FLAGS, v[0], v[1], v[2], v[3])
        UNSTAGE(q, stage, s, e)


def _qsegment2(ptrs, k, keys, a, b, c):
    """Elements a..b-1 of tensor k block by block (a rule with two state arrays)."""
    stage = _quant.stack_buffer(BUFFER, np.float32)
    q = (ptrs[k, C0], ptrs[k, A0], ptrs[k, C1], ptrs[k, A1], ptrs[k, C2], ptrs[k, A2])
    for s in range(a, b, BLOCK):
        e = min(s + BLOCK, b)
        STAGE(q, stage, s, e)
        v = _block_views(CODES, ptrs, k, keys, stage, s)
        for i in range(s, e):
            v[5][i] = STEP(i, c, FLAGS, v[0], v[1], v[2], v[3], v[4])
        UNSTAGE(q, stage, s, e)


def _qsegment3(ptrs, k, keys, a, b, c):
    """Elements a..b-1 of tensor k block by block (a rule with three state arrays)."""
    stage = _quant.stack_buffer(BUFFER, np.float32)
    q = (ptrs[k, C0], ptrs[k, A0], ptrs[k, C1], ptrs[k, A1], ptrs[k, C2], ptrs[k, A2])
    for s in range(a, b, BLOCK):
        e = min(s + BLOCK, b)
        STAGE(q, stage, s, e)
        v = _block_views(CODES, ptrs, k, keys, stage, s)
        for i in range(s, e):
            v[6][i] = STEP(i, c, FLAGS, v[0], v[1], v[2], v[3], v[4], v[5])
        UNSTAGE(q, stage, s, e)


_QSEGMENTS = {1: _qsegment1, 2: _qsegment2, 3: _qsegment3}


@njit(inline="always", **_OPTIONS)
def _cut(offsets, x, align):
    """Position x of the concatenation moved up to the next multiple of ``align`` elements of
    the tensor it falls in (at most that tensor's end): a piece boundary."""
    n = offsets.shape[0] - 1
    k = np.searchsorted(offsets, x, side="right") - 1
    if k >= n:
        return offsets[n]
    start = offsets[k]
    return min(offsets[k + 1], start + (x - start + align - 1) // align * align)


@intrinsic
def _call_segment(typingctx, address, ptrs, k, keys, a, b, c):
    """Call the compiled segment at ``address``: the native entry of a segment compiled for
    exactly these argument types (ManyKernel._first_call compiles it for the driver's types,
    ``c`` typed by ManyKernel.consts_type as the driver types it, which the driver checks
    through ``ctag``). One driver serves every
    segment of a rule, so a new format combination compiles only its segment."""
    argtys = (ptrs, types.intp, keys, types.intp, types.intp, c)

    def codegen(context, builder, sig, args):
        call_native(context, builder, args[0], argtys, args[1:])
        return context.get_dummy_value()

    return types.void(types.int64, *argtys), codegen


def _driver(ptrs, offsets, keys, nthreads, grad_scale, maximize, scalars, segment, ctag,
            align):
    """The N tensors' elements in ``nthreads`` pieces of their concatenation, one per prange
    iteration (the serial variant: one piece), each walked tensor by tensor by the segment
    at address ``segment``. A boundary falls on a multiple of ``align`` elements of its
    tensor (PIECE_ALIGN, or the block with quantized states: a block is never split between
    threads). ``ctag`` is type_tag of the consts type the segment was compiled for: a
    segment called with another type would read its arguments wrongly, so that is refused
    before any element is touched."""
    c = CONSTS(REAL, grad_scale, maximize, scalars)
    if type_tag_of(c) != ctag:
        raise TypeError("the segment was compiled for other scalars than the driver's")
    n = offsets.shape[0] - 1
    total = offsets[n]
    per = (total + nthreads - 1) // nthreads
    for t in prange(nthreads):
        lo = _cut(offsets, min(total, t * per), align)
        hi = _cut(offsets, min(total, (t + 1) * per), align)
        k = np.searchsorted(offsets, lo, side="right") - 1
        while k < n and offsets[k] < hi:
            start = offsets[k]
            _call_segment(segment, ptrs, k, keys, max(lo, start) - start,
                          min(hi, offsets[k + 1]) - start, c)
            k += 1


class ManyKernel:
    """``rule_many(ptrs, offsets, fmts, keys, grad_scale, maximize, use_acc, *rule_scalars)``.

    name: the rule; consts(real, grad_scale, maximize, rule_scalars) -> c, the scalars of
    STEP; step(i, c, flags, param, grad, grad_acc, *states) -> the updated param value (step
    stores it in param[i]; the driver copies it to out[i]); n_states: the rule's state arrays;
    flags(use_acc, rule_scalars) -> (the flags tuple for step, the roles the call does not
    use). The call table maps (the call's format codes, the table's width, flags,
    serial/parallel) to a compiled entry point; a key is checked (check_formats) before it
    enters it, so a call the kernel refuses raises every time.
    """

    def __init__(self, name, consts, step, n_states, flags):
        self.name = name
        self.__name__ = f"{name}_many"
        self.consts = consts
        self.step = step
        self.roles = 4 + n_states
        self.flags = flags
        self.table = {}
        self.dispatchers = {}       # (codes, flags, parallel): the driver's dispatcher
        self.segments = {}

    def check_formats(self, codes, width):
        """ValueError unless the format codes (one per role, as the call gives them) and the
        address table's width make a call this kernel runs (kernels/CONTRACT.md: quantized
        codes 5-8 only in state roles 3..R-2, all 8-bit or all 4-bit, never with float64, and
        then a table of width R + S with the absmax columns)."""
        r, s = self.roles, self.roles - 4
        where = f"{self.name}_many"
        if len(codes) != r:
            raise ValueError(f"{where}: expected {r} format codes (one per role); got {codes}")
        if width not in (r, r + s):
            raise ValueError(f"{where}: expected an address table of {r} columns (or {r + s} "
                             f"with the absmax columns of quantized states); got {width}")
        if any(c not in _NAMES for c in codes):
            raise ValueError(f"{where}: expected format codes -1..8; got {codes}")
        q = [j for j, c in enumerate(codes) if c in _quant.QUANTIZED]
        if not q:
            return
        if any(j < 3 or j > r - 2 for j in q):
            raise ValueError(f"{where}: expected quantized codes (5-8) only in the state roles "
                             f"(columns 3..{r - 2}); got format codes {codes}")
        if len({_quant.BITS[codes[j]] for j in q}) != 1:
            raise ValueError(f"{where}: expected the quantized states of one call all 8-bit "
                             f"(codes 5, 6) or all 4-bit (7, 8); got format codes {codes}")
        if F64 in codes:
            raise ValueError(f"{where}: expected float32 or 16-bit arrays with quantized "
                             f"states, not float64; got format codes {codes}")
        if width != r + s:
            raise ValueError(f"{where}: expected an address table of {r + s} columns with "
                             f"quantized states (the absmax columns: column R + r - 3 the "
                             f"absmax of role r); got {width}")

    def segment(self, codes, flags):
        """The compiled copy of _segment<n> (_qsegment<n> with quantized states) for the role
        formats ``codes`` (out last) and the STEP flags (a dispatcher, compiled by
        _first_call for the call's types), and the piece alignment it needs. The segment loop
        is its own (serial, non-inlined) function called from the driver's prange body:
        Numba's parfor pass removes a store to an array it cannot trace to an argument (a
        view made inside the loop) as dead; outside a parfor no such pass runs."""
        staged = [j for j, c in enumerate(codes) if c in _quant.QUANTIZED]
        align = _quant.BLOCK[codes[staged[0]]] if staged else PIECE_ALIGN
        segment = self.segments.get((tuple(codes), flags))
        if segment is not None:
            return segment, align
        spelled = "_".join(_NAMES[c] for c in codes) + "_" + "".join("01"[bool(f)] for f in flags)
        constants = dict(STEP=self.step, CODES=tuple(codes), FLAGS=tuple(bool(f) for f in flags))
        body = _SEGMENTS[self.roles - 4]
        if staged:
            body = _QSEGMENTS[self.roles - 4]
            # the addresses of each slot's codes and absmax: read once per tensor (the
            # stage functions get no array: Numba would incref and decref it per call, two
            # atomic operations on one counter per block, from every thread)
            for n in range(_MAX_SLOTS):
                j = staged[n] if n < len(staged) else None
                constants.update({f"C{n}": j or 0,
                                  f"A{n}": 0 if j is None else self.roles + j - 3})
            inout = {}
            for what, table in (("stage", _quant.DEQUANTIZE), ("unstage", _quant.QUANTIZE)):
                slots = {f"Q{n}": table[codes[staged[n]]] if n < len(staged) else
                         _quant.nothing for n in range(_MAX_SLOTS)}
                inout[what.upper()] = copy_with_constants(
                    _stage, f"{self.name}_many_{what}_{spelled}", _INLINE, BLOCK=align, **slots)
            constants.update(inout, BLOCK=align, BUFFER=align * len(staged))
        segment = self.segments[tuple(codes), flags] = copy_with_constants(
            body, f"{self.name}_many_segment_{spelled}", _OPTIONS, **constants)
        return segment, align

    def driver(self, real, parallel):
        """The rule's driver for the computing type ``real`` (np.float32, or np.float64 with
        float64 params), serial or parallel: one per rule, whatever the formats (the segment
        comes as an address), so a new combination of formats compiles only its segment."""
        driver = self.dispatchers.get((real, parallel))
        if driver is None:
            variant = "parallel" if parallel else "serial"
            driver = self.dispatchers[real, parallel] = copy_with_constants(
                _driver, f"{self.name}_many_{variant}_{np.dtype(real).name}",
                dict(_OPTIONS, parallel=True) if parallel else _OPTIONS,
                CONSTS=self.consts, REAL=real)
        return driver

    def consts_type(self, real, scalars_type):
        """The Numba type of CONSTS(real, grad_scale, maximize, scalars), as the driver
        types it: the last argument of every segment."""
        return consts_type(self.consts, numba.typeof(real), types.float64, types.boolean,
                           scalars_type)

    def __call__(self, ptrs, offsets, fmts, keys, grad_scale, maximize, use_acc, *scalars):
        flags, unused = self.flags(use_acc, scalars)
        parallel = offsets[-1] >= PARALLEL_MIN and not _Runtime.serial_only
        key = (tuple(fmts.tolist()), ptrs.shape[1], flags, parallel)
        entry = self.table.get(key)
        if entry is None:
            self._first_call(key, unused, ptrs, offsets, keys, grad_scale, maximize, scalars)
            return
        self._run(entry, parallel, ptrs, offsets, keys, grad_scale, maximize, scalars)

    def _first_call(self, key, unused, ptrs, offsets, keys, grad_scale, maximize, scalars):
        """A key not in the call table: checked, compiled (or found compiled under the codes
        it runs with: a role the call does not use gets NONE), run, entered."""
        fmts, width, flags, parallel = key
        self.check_formats(list(fmts), width)
        codes = list(fmts)
        for r in unused:
            codes[r] = NONE
        # Compiled for floats and bools (the scalars' types normalised), then called through
        # the driver's entry point for exactly these types, which skips the dispatcher's type
        # resolution and converts each later call's numbers itself (an int to float64,
        # anything to bool).
        scalars = normalised_scalars(scalars)
        real = np.float64 if codes[0] == F64 else np.float32
        segment, align = self.segment(codes, flags)
        driver = self.driver(real, parallel)
        ptrs_t, keys_t, scalars_t = numba.typeof(ptrs), numba.typeof(keys), numba.typeof(scalars)
        with wide_vectors():                   # the segment's loops are the vectorised ones
            seg_sig = (ptrs_t, types.intp, keys_t, types.intp, types.intp,
                       self.consts_type(real, scalars_t))
            segment.compile(seg_sig)
            cres = segment.overloads[seg_sig]
            address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
            entry = driver.compile((ptrs_t, numba.typeof(offsets), keys_t, types.intp,
                                    types.float64, types.boolean, scalars_t, types.int64,
                                    types.int64, types.intp))
        call = (entry, address, type_tag(seg_sig[-1]), align)
        self._run(call, parallel, ptrs, offsets, keys, float(grad_scale), bool(maximize), scalars)
        self.table[key] = call

    @staticmethod
    def _run(call, parallel, ptrs, offsets, keys, gs, mx, scalars):
        entry, segment, ctag, align = call
        if not parallel:
            entry(ptrs, offsets, keys, 1, gs, mx, scalars, segment, ctag, align)
            return
        # one piece per thread: fastgd.set_num_threads's count, which _run_parallel applies,
        # else Numba's default (numba.get_num_threads costs 2.5 us; a piece count off from the
        # thread count changes only the balance, never a result)
        nthreads = _Runtime.num_threads or numba.config.NUMBA_NUM_THREADS
        _run_parallel(entry, ptrs, (offsets, keys, nthreads, gs, mx, scalars, segment, ctag,
                                     align))


def many_kernel(name, consts, step, n_states, flags):
    return ManyKernel(name, consts, step, n_states, flags)
