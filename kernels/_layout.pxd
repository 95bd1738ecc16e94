# The many-tensor layout of the Cython kernels (kernels/CONTRACT.md, "<rule>_many"): a table of
# tensors stepped in one call, their elements divided among the threads as if they were one
# buffer. Written once here; each rule gives only its segment function (a piece [lo, hi) of one
# tensor, every role in its format).
#
# noinline: a rule's `_<rule>_piece` (its single loop, now a thin call of its inline body, the
# body the lane loop shares) is declared __attribute__((noinline)) by a verbatim prototype in its
# .pyx. Without it gcc's early inliner folds the thin piece into `_<rule>_run`, which is inlined
# into every caller, and each copy of the body is compiled on its own: their FMA contractions
# differed, so an all-float32 `<rule>_many` was not bitwise the single kernel (adam: 3 of 40001
# results, sgd: 356). One piece function: one machine code for both. And `_<rule>_lanes` is
# declared __attribute__((always_inline)) the same way: gcc kept adam's and rmsprop's as one
# function called by every branch of the segment, the flags of "one call per combination" back
# at run time inside the 16-lane loop. A prototype that no longer matches Cython's signature is
# a compile error ("conflicting types"), never silent.
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint32_t, uintptr_t
cimport numpy as cnp

from _parallel cimport PIECE_ALIGN, piece_start, threads_for
from libc.string cimport memcmp, memcpy, memset

from _formats cimport FGD_F64, FGD_LANES, fgd_ld_prefetches

cdef extern from "_quant.h" nogil:
    enum:
        FGD_Q8_BLOCK
        FGD_Q4_BLOCK
    float fgd_q_absmax(const float* x, int n)
    void fgd_q8_codes(const float* x, int n, float absmax, int is_signed, uint8_t* codes)
    void fgd_q4_codes(const float* x, int n, float absmax, int is_signed, uint8_t* packed)
    float fgd_q8_quantize(const float* x, int n, int is_signed, uint8_t* codes)
    void fgd_q8_dequantize(const uint8_t* codes, int n, float absmax, int is_signed, float* out)
    float fgd_q4_quantize(const float* x, int n, int is_signed, uint8_t* packed)
    void fgd_q4_dequantize(const uint8_t* packed, int n, float absmax, int is_signed, float* out)

cdef extern from *:
    """
    /* the most state roles a quantized call stages (fastgd's rules have at most 3) */
    #define FGD_QMAX 4
    #define FGD_MAX_ROLES (4 + FGD_QMAX)
    #define FGD_Q8_SIGNED 5
    #define FGD_Q8_UNSIGNED 6
    #define FGD_Q4_SIGNED 7
    #define FGD_Q4_UNSIGNED 8
    /* elements staged per call of the segment function: whole blocks of either width (8 of
     * 8 bits, 16 of 4). One call a block cost 4-bit AdamW ~20% at 16M (the segment's setup,
     * its recipe and alias checks per 128 elements). 2048 where it was 1024: 2-4% faster
     * (4-bit, 8-bit, bf16+8-bit at 16M, one-process A/B of the two builds on Zen 5, 1 and 2
     * threads; 512 cost 8-bit 4-7%, 4096 was level with 2048). Two staged roles of 2048
     * floats, 16 KiB, stay in L1 */
    #ifndef FGD_QCHUNK
    #define FGD_QCHUNK 2048
    #endif
    /* the staged elements of one segment: one float32 buffer per distinct quantized address,
     * cache-line aligned (the rules' vector loops run on them) */
    typedef struct { float v[FGD_QMAX][FGD_QCHUNK] __attribute__((aligned(64))); } fgd_qstage;
    /* the cache lines of bytes [from, to) of an array, prefetched */
    static inline void fgd_prefetch(const char* base, Py_ssize_t from, Py_ssize_t to) {
        Py_ssize_t o;
        for (o = from & ~(Py_ssize_t)63; o < to; o += 64)
            __builtin_prefetch(base + o, 0, 3);
    }
    """
    enum:
        FGD_QMAX
        FGD_QCHUNK
        FGD_MAX_ROLES
        FGD_Q8_SIGNED
        FGD_Q8_UNSIGNED
        FGD_Q4_SIGNED
        FGD_Q4_UNSIGNED
    ctypedef struct fgd_qstage:
        float v[4][2048]     # FGD_QMAX x FGD_QCHUNK (the C definition is the one used)
    void fgd_prefetch(const char* base, Py_ssize_t lo, Py_ssize_t hi) nogil


cdef inline void _stage_in(const uint8_t* codes, const float* absmax, int signed_map, int bits,
                           Py_ssize_t lo, Py_ssize_t hi, float* buf) noexcept nogil:
    """The values of elements [lo, hi) (``lo`` on a block) of a quantized state into ``buf``."""
    cdef Py_ssize_t x, block = FGD_Q8_BLOCK if bits == 8 else FGD_Q4_BLOCK
    x = lo
    while x < hi:
        if bits == 8:
            fgd_q8_dequantize(codes + x, <int>min(block, hi - x), absmax[x // block], signed_map,
                              buf + (x - lo))
        else:
            fgd_q4_dequantize(codes + x // 2, <int>min(block, hi - x), absmax[x // block],
                              signed_map, buf + (x - lo))
        x = x + block


cdef inline void _stage_absmax(const float* buf, int bits, Py_ssize_t lo, Py_ssize_t hi,
                               float* absmax) noexcept nogil:
    """The absmax of each block of elements [lo, hi) of ``buf``, stored."""
    cdef Py_ssize_t x, block = FGD_Q8_BLOCK if bits == 8 else FGD_Q4_BLOCK
    x = lo
    while x < hi:
        absmax[x // block] = fgd_q_absmax(buf + (x - lo), <int>min(block, hi - x))
        x = x + block


cdef inline void _stage_out(const float* buf, int signed_map, int bits, Py_ssize_t lo,
                            Py_ssize_t hi, uint8_t* codes, const float* absmax) noexcept nogil:
    """Elements [lo, hi) of ``buf`` quantized back: their codes, with their blocks' absmax
    (_stage_absmax, before: no block's codes wait on its own reduction and division)."""
    cdef Py_ssize_t x, block = FGD_Q8_BLOCK if bits == 8 else FGD_Q4_BLOCK
    x = lo
    while x < hi:
        if bits == 8:
            fgd_q8_codes(buf + (x - lo), <int>min(block, hi - x), absmax[x // block], signed_map,
                         codes + x)
        else:
            fgd_q4_codes(buf + (x - lo), <int>min(block, hi - x), absmax[x // block], signed_map,
                         codes + x // 2)
        x = x + block


ctypedef void (*segment_fn)(char** a, const int* f, Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                            const void* k) noexcept nogil


cdef inline list _codes(const int* f, int roles):
    """The format codes, for an error message."""
    return [f[r] for r in range(roles)]


cdef inline Py_ssize_t table_of(cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts,
                                cnp.ndarray keys, int roles, int* width, int* bits) except -1:
    """The number of tensors of a checked table (a cheap last guard: fastgd._core built it).

    ``width``: the row length of ``ptrs``, R = ``roles`` or R + S with S = R - 4 absmax columns
    (kernels/CONTRACT.md, "Quantized states"); ``bits``: 8 or 4 if any role has a quantized code
    (5-8), else 0. ValueError for a table the contract does not allow."""
    cdef int states = roles - 4, r, b
    cdef const int* f
    cdef Py_ssize_t n = cnp.PyArray_DIM(ptrs, 0) if cnp.PyArray_NDIM(ptrs) == 2 else -1
    if (n < 0 or (cnp.PyArray_DIM(ptrs, 1) != roles and cnp.PyArray_DIM(ptrs, 1) != roles + states)
            or cnp.PyArray_TYPE(ptrs) != cnp.NPY_INT64
            or not cnp.PyArray_IS_C_CONTIGUOUS(ptrs)
            or cnp.PyArray_TYPE(offsets) != cnp.NPY_INT64 or cnp.PyArray_SIZE(offsets) != n + 1
            or not cnp.PyArray_IS_C_CONTIGUOUS(offsets)
            or cnp.PyArray_TYPE(fmts) != cnp.NPY_INT32 or cnp.PyArray_SIZE(fmts) != roles
            or not cnp.PyArray_IS_C_CONTIGUOUS(fmts)
            or cnp.PyArray_TYPE(keys) != cnp.NPY_UINT32 or cnp.PyArray_SIZE(keys) != n
            or not cnp.PyArray_IS_C_CONTIGUOUS(keys)):
        raise ValueError(f"a many-tensor table is ptrs int64 (N, {roles}) (or (N, "
                         f"{roles + states}) with the absmax columns of quantized states), "
                         f"offsets int64 (N + 1,), fmts int32 ({roles},), keys uint32 (N,), all "
                         f"C-contiguous")
    width[0] = <int>cnp.PyArray_DIM(ptrs, 1)
    bits[0] = 0
    f = <const int*>cnp.PyArray_DATA(fmts)
    for r in range(roles):      # no Python objects unless there is an error to say
        if f[r] < FGD_Q8_SIGNED or f[r] > FGD_Q4_UNSIGNED:
            continue
        if r < 3 or r > roles - 2:
            raise ValueError(f"quantized format codes (5-8) are for the state roles (columns 3 to "
                             f"{roles - 2}) only; got codes {_codes(f, roles)}")
        b = 8 if f[r] <= FGD_Q8_UNSIGNED else 4
        if bits[0] != 0 and bits[0] != b:
            raise ValueError(f"the quantized states of one call are all 8-bit (codes 5, 6) or all "
                             f"4-bit (7, 8); got codes {_codes(f, roles)}")
        bits[0] = b
    if bits[0] != 0:
        for r in range(roles):
            if f[r] == FGD_F64:
                raise ValueError(f"quantized states need float32, bfloat16 or float16 params and "
                                 f"grads, not float64; got codes {_codes(f, roles)}")
        if width[0] != roles + states:
            raise ValueError(f"quantized states need the absmax columns: ptrs int64 (N, "
                             f"{roles + states}); got (N, {width[0]}) with codes "
                             f"{_codes(f, roles)}")
        if states > FGD_QMAX:   # never with the rules of fastgd (at most 3 states)
            raise ValueError(f"at most {FGD_QMAX} quantized state roles; got {states}")
    return n


cdef inline Py_ssize_t _cut(Py_ssize_t x, Py_ssize_t start, Py_ssize_t end,
                            Py_ssize_t align) noexcept nogil:
    """A piece boundary x of the concatenation as an index in the tensor [start, end): rounded up
    to a multiple of ``align`` of the tensor itself: PIECE_ALIGN, or a quantized call's block.
    So every tensor is cut where its single
    kernel would cut it (multiples of 16 from its start), and a piece ends mid-tensor only on a
    full vector: the vectorised *_piece loops compute the elements of their scalar tail with
    other FMA contractions than their vector body, so a cut at, say, 31507 gave 3 of 40001 float32
    results that differed from the single kernel and from one thread (adam_many, measured). Both
    threads at a boundary round it alike; a piece is at most align - 1 elements longer. With
    quantized states the cut falls on a block (256 or 128 elements, multiples of 16): a block is
    never split between threads, its codes and absmax are one thread's."""
    if x <= start:
        return 0
    if x >= end:
        return end - start
    return min(end - start, (x - start + align - 1) // align * align)


cdef inline int compute_kind(const int* f, int roles) noexcept nogil:
    """FGD_F64 if every role but ``out`` (the last) is float64, FGD_F32 if every one is float32
    with no ``out``: the single kernels' loops run on the memory itself; else -1 (lanes)."""
    cdef int r, all32 = f[roles - 1] == -1, all64 = 1
    for r in range(roles - 1):
        all32 = all32 and f[r] == 0
        all64 = all64 and f[r] == 3
    return 3 if all64 else (0 if all32 else -1)


# --- whole vectors only: a piece's last < 16 elements staged ---------------------------------
#
# A rule's lane loop (kernels/<rule>.pyx, _<rule>_lanes) steps whole vectors of FGD_LANES
# elements only; the layout gives it nothing else. A piece's last hi - full < 16 elements are
# copied, each role in its format, into a vector's worth of zeros on the stack, stepped there
# as one whole vector at their own indices (the buffer stands for elements full .. full + 15,
# so stochastic rounding sees the same i) and copied back. Why: with the partial vector inside
# the lane loop, gcc turned its element loops into memcpy calls in the loop body; a call
# clobbers every vector register, so the loop kept its broadcast constants on the stack and
# reloaded them each vector, and branched on the lane count: bf16 AdamW ran at 0.85 ns an
# element in cache where the same loop without a tail runs at 0.42 (measured, one thread).
# The lanes past the tail compute on zeros and are never stored to the tensor.


cdef inline Py_ssize_t _width_of(int code) noexcept nogil:
    """Bytes per element of a lane loop's format (float32 4; the 16-bit formats 2)."""
    return 4 if code == 0 else (8 if code == FGD_F64 else 2)


cdef inline int lane_roles(int roles, bint use_acc, int off1=-1, int off2=-1) noexcept nogil:
    """The roles a rule's lane loop reads or writes, as a bit mask: every one but grad_acc
    (role 2) without fused accumulation and the roles ``off1``, ``off2`` its options switch
    off (AMSGrad's vmax, a momentum buffer, ...). A stand-in's code in the table is the role's
    nominal format, not its array's (kernels/CONTRACT.md), so only the used roles say how wide
    their elements are."""
    cdef int used = (1 << roles) - 1
    if not use_acc:
        used = used & ~(1 << 2)
    if off1 >= 0:
        used = used & ~(1 << off1)
    if off2 >= 0:
        used = used & ~(1 << off2)
    return used


cdef inline void _tail(segment_fn fn, char** row, const int* f, int roles, int used,
                       Py_ssize_t full, Py_ssize_t hi, uint32_t key, const void* k) noexcept nogil:
    """Elements [full, hi) (fewer than FGD_LANES) of one tensor as one staged whole vector:
    each role in ``used`` (lane_roles) in its own buffer, every other at zeros (never the
    tensor's memory, whatever its loop would do with it)."""
    cdef char buf[FGD_MAX_ROLES][8 * FGD_LANES]
    cdef char* a[FGD_MAX_ROLES]
    cdef int own[FGD_MAX_ROLES]
    cdef Py_ssize_t w, m = hi - full
    cdef int r
    for r in range(roles):
        memset(buf[r], 0, sizeof(buf[r]))
        own[r] = f[r] >= 0 and ((used >> r) & 1) != 0
        if own[r]:
            w = _width_of(f[r])
            memcpy(buf[r], row[r] + full * w, <size_t>(m * w))
        else:
            w = 8
        # the buffer stands for elements full .. full + FGD_LANES - 1
        a[r] = <char*>(<uintptr_t>buf[r] - <uintptr_t>(full * w))
    fn(a, f, full, full + FGD_LANES, key, k)
    for r in range(roles):
        if own[r]:
            w = _width_of(f[r])
            # only what changed goes back: the grad is read-only to the rule, and may be
            # read-only memory
            if memcmp(buf[r], row[r] + full * w, <size_t>(m * w)) != 0:
                memcpy(row[r] + full * w, buf[r], <size_t>(m * w))


cdef inline void segment(segment_fn fn, char** row, const int* f, int roles, int used,
                         Py_ssize_t lo, Py_ssize_t hi, uint32_t key, const void* k) noexcept nogil:
    """The rule's segment function on elements [lo, hi) of one tensor: directly where its
    single loop runs (all float32 or all float64, compute_kind >= 0), else whole vectors of
    lanes and the staged tail (above)."""
    cdef Py_ssize_t full = lo + (hi - lo) // FGD_LANES * FGD_LANES
    if full == hi or compute_kind(f, roles) >= 0:
        fn(row, f, lo, hi, key, k)
        return
    if full > lo:
        fn(row, f, lo, full, key, k)
    _tail(fn, row, f, roles, used, full, hi, key, k)


# --- quantized states (kernels/CONTRACT.md, "Quantized states"): staged block by block --------
#
# A quantized state role is dequantized block by block into a float32 buffer on the stack (a
# few blocks per segment call, FGD_QCHUNK elements), the rule's segment function steps them with
# the role pointing at the buffer (format code 0, float32: the segment functions need not know;
# with float32 params the single kernel's vector loop runs on it), and the buffer is quantized
# back, block by block. The buffer stands for the elements at their absolute indices in the
# tensor (the address of element i is buf + (i - start) * 4), so the segment sees the indices it
# would see without quantization: stochastic rounding's bits (code 4) depend on them.


cdef inline void _q_segment(segment_fn fn, char** row, const int* f, int roles, int used, int bits,
                            Py_ssize_t lo, Py_ssize_t hi, uint32_t key,
                            const void* k) noexcept nogil:
    """Elements [lo, hi) of one tensor with quantized states (``lo`` on a block boundary, ``hi``
    on one or the tensor's end), FGD_QCHUNK elements (whole blocks) at a time: stage, step,
    quantize back. Each block depends on its own elements only, so the bits are those of one
    block at a time."""
    cdef char* a[FGD_MAX_ROLES]          # the row the segment function sees
    cdef int fs[FGD_MAX_ROLES]           # its codes: staged roles float32
    cdef int slot[FGD_MAX_ROLES]         # the staged buffer of each role, or -1
    cdef uint8_t* codes[FGD_QMAX]
    cdef float* absmax[FGD_QMAX]
    cdef int signed_map[FGD_QMAX]
    cdef fgd_qstage stage
    cdef int r, q, nq = 0, c, ns = 0
    cdef Py_ssize_t b0, b1, x, e, nxt, s0, s1
    cdef Py_ssize_t block = FGD_Q8_BLOCK if bits == 8 else FGD_Q4_BLOCK
    cdef char* at
    cdef const char* pf[FGD_MAX_ROLES + FGD_QMAX]   # the streams the next chunk reads
    cdef int pl[FGD_MAX_ROLES + FGD_QMAX]           # their bytes of e elements: e << pl
    cdef int pr[FGD_MAX_ROLES + FGD_QMAX]           # ... or e >> pr (codes)
    cdef int lanes
    for q in range(FGD_QMAX):       # never read past nq: set so gcc sees it (-Wmaybe-uninitialized)
        codes[q] = NULL
        absmax[q] = NULL
        signed_map[q] = 0
    for r in range(roles):
        a[r] = row[r]
        fs[r] = f[r]
        slot[r] = -1
    # the distinct addresses of the quantized roles, each staged once (a stand-in at a staged
    # array shares its buffer, as the reference shares one copy); a quantized code at the
    # address of the param, grad, grad_acc or out is a stand-in of a non-state array (never
    # touched): not staged
    for r in range(3, roles - 1):
        c = f[r]
        if c < FGD_Q8_SIGNED or c > FGD_Q4_UNSIGNED:
            continue
        fs[r] = 0
        at = row[r]
        if (at == row[0] or at == row[1] or at == row[2]
                or (f[roles - 1] >= 0 and at == row[roles - 1])):
            continue
        for q in range(nq):
            if <char*>codes[q] == at:
                slot[r] = q
                break
        if slot[r] < 0:
            codes[nq] = <uint8_t*>at
            absmax[nq] = <float*>row[roles + r - 3]
            signed_map[nq] = c == FGD_Q8_SIGNED or c == FGD_Q4_SIGNED
            slot[r] = nq
            nq = nq + 1
    # any other state role at a staged address (a stand-in whatever its code) reads the buffer
    for r in range(3, roles - 1):
        if slot[r] < 0:
            for q in range(nq):
                if row[r] == <char*>codes[q]:
                    slot[r] = q
                    fs[r] = 0
                    break
    # The next chunk's memory is prefetched while this one is quantized: the quantize is most
    # of a chunk's time and touches no stream but its codes, so without it the param and grad
    # streams stalled the rule's loop at the start of every chunk (the hardware prefetcher
    # runs only a few lines ahead of demand). Where the segment runs a lane loop (16-bit params
    # or grads), the lane loop's loads prefetch their own streams (fgd_ld_prefetches,
    # kernels/_formats.h): a second prefetch of each line cost bf16+8bit 4% (A/B)
    lanes = compute_kind(fs, roles) < 0
    for r in range(roles):
        if slot[r] < 0 and ((used >> r) & 1) != 0 and 0 <= fs[r] < FGD_Q8_SIGNED and (
                lanes == 0 or not fgd_ld_prefetches(fs[r])):
            if r >= 3 and r < roles - 1 and f[r] >= FGD_Q8_SIGNED:
                continue        # a quantized stand-in of a non-state array: never touched
            pf[ns] = row[r]
            c = <int>_width_of(fs[r])
            pl[ns] = 1 if c == 2 else (2 if c == 4 else 3)
            pr[ns] = 0
            ns = ns + 1
    # the codes, and below the absmax (without it, stage_in waited on the absmax of every 16th
    # block: 16% of its time, perf). Byte offsets by shifts: with a division per bound and stream (12
    # idiv a 4-bit block) this bookkeeping took 16% of the 4-bit step (perf)
    for q in range(nq):
        pf[ns] = <const char*>codes[q]
        pl[ns] = 0
        pr[ns] = 0 if bits == 8 else 1
        ns = ns + 1
    b0 = lo
    while b0 < hi:
        b1 = min(b0 + FGD_QCHUNK, hi)
        nxt = min(b1 + FGD_QCHUNK, hi)
        # the next chunk's absmax (a float32 a block: 8 or 16 of them, a line) once a chunk:
        # spread over the blocks with the other streams, each block prefetched the same line
        # again, and 4-bit AdamW ran 1.01-1.07x slower (8-bit and bf16+8bit 1.00-1.10x; one-
        # process A/B, 16M and 64M, 1 and 2 threads)
        for q in range(nq):
            fgd_prefetch(<const char*>absmax[q], b1 // block * 4, (nxt + block - 1) // block * 4)
        for q in range(nq):
            _stage_in(codes[q], absmax[q], signed_map[q], bits, b0, b1, stage.v[q])
        for r in range(3, roles - 1):
            if slot[r] >= 0:
                a[r] = <char*>(<uintptr_t>stage.v[slot[r]] - <uintptr_t>(b0 * 4))
        segment(fn, a, fs, roles, used, b0, b1, key, k)
        for q in range(nq):
            _stage_absmax(stage.v[q], bits, b0, b1, absmax[q])
        x = b0
        while x < b1:
            e = min(x + block, b1)
            for q in range(nq):
                _stage_out(stage.v[q] + (x - b0), signed_map[q], bits, x, e, codes[q], absmax[q])
            # a block's share of the next chunk, spread so the misses are not one burst
            s0 = b1 + (x - b0)
            s1 = min(s0 + block, nxt)
            if s0 < s1:
                for c in range(ns):
                    fgd_prefetch(pf[c], (s0 << pl[c]) >> pr[c],
                                 ((s1 << pl[c]) + (1 << pr[c]) - 1) >> pr[c])
            x = e
        b0 = b1


cdef inline void _walk(segment_fn fn, const int64_t* ptrs, const int64_t* offsets, Py_ssize_t n,
                       int roles, int used, int width, int bits, const int* f, const uint32_t* keys,
                       const void* k, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The elements [lo, hi) of the concatenation: each tensor's part as one segment (with
    quantized states, ``bits`` 8 or 4, cut on its blocks and stepped block by block)."""
    cdef Py_ssize_t a = 0, b = n, mid, j, s, e
    cdef Py_ssize_t align = PIECE_ALIGN if bits == 0 else (
        FGD_Q8_BLOCK if bits == 8 else FGD_Q4_BLOCK)
    while b - a > 1:                # the last tensor starting at or before lo
        mid = (a + b) // 2
        if offsets[mid] <= lo:
            a = mid
        else:
            b = mid
    j = a
    while j < n and offsets[j] < hi:
        if offsets[j + 1] > lo:
            s = _cut(lo, offsets[j], offsets[j + 1], align)
            e = _cut(hi, offsets[j], offsets[j + 1], align)
            if e > s:
                if bits == 0:
                    segment(fn, <char**>(ptrs + j * width), f, roles, used, s, e, keys[j], k)
                else:
                    _q_segment(fn, <char**>(ptrs + j * width), f, roles, used, bits, s, e, keys[j],
                               k)
        j = j + 1


cdef inline void run_many(segment_fn fn, cnp.ndarray ptrs, cnp.ndarray offsets, cnp.ndarray fmts,
                          cnp.ndarray keys, int roles, const void* k, int used) except *:
    """Step every tensor of the table with the rule's segment function ``fn`` and scalars ``k``;
    ``used``: the roles its lane loop touches (lane_roles)."""
    cdef int width, bits
    cdef Py_ssize_t n = table_of(ptrs, offsets, fmts, keys, roles, &width, &bits)
    cdef const int64_t* p = <const int64_t*>cnp.PyArray_DATA(ptrs)
    cdef const int64_t* o = <const int64_t*>cnp.PyArray_DATA(offsets)
    cdef const int* f = <const int*>cnp.PyArray_DATA(fmts)
    cdef const uint32_t* kk = <const uint32_t*>cnp.PyArray_DATA(keys)
    cdef Py_ssize_t total, lo, hi, j
    cdef int t, nthreads
    if n == 0:
        return
    total = o[n]
    nthreads = threads_for(total)
    with nogil:
        if nthreads == 1:
            for j in range(n):
                if o[j + 1] > o[j]:
                    if bits == 0:
                        segment(fn, <char**>(p + j * width), f, roles, used, 0,
                                o[j + 1] - o[j], kk[j], k)
                    else:
                        _q_segment(fn, <char**>(p + j * width), f, roles, used, bits, 0,
                                   o[j + 1] - o[j], kk[j], k)
        else:
            for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                lo = piece_start(total, nthreads, t)
                hi = piece_start(total, nthreads, t + 1)
                if hi > lo:
                    _walk(fn, p, o, n, roles, used, width, bits, f, kk, k, lo, hi)


cdef inline void local_row(char** row, const int* codes, char** a, int* f, int roles) noexcept nogil:
    """Copy a tensor's row of addresses and the format codes into a lane loop's locals."""
    cdef int r
    for r in range(roles):
        a[r] = row[r]
        f[r] = codes[r]


# The formats most calls have (param, grad and grad_acc, states, out), numbered: a lane loop
# called with one of these numbers as a constant knows its roles' formats at compile time (gcc
# folds fgd_ld/fgd_st's switch away and keeps the lanes in registers): measured at 16M, bf16
# AdamW 1.5x and fp16 1.8x faster than with the codes read at run time. Other combinations
# (and grad_acc's fused accumulation) run with the codes read at run time.
cdef extern from *:
    """
    static const int fgd_recipes[11][4] = {
        {1, 1, 1, -1}, {2, 2, 2, -1},              /* all bfloat16, all float16 */
        {1, 1, 0, -1}, {2, 2, 0, -1},              /* 16-bit params, float32 states */
        {0, 0, 1, -1}, {0, 0, 2, -1},              /* float32 params, 16-bit states */
        {0, 1, 0, 1}, {0, 2, 0, 2},                /* master weights, float32 states */
        {0, 1, 1, 1},                              /* master weights, bfloat16 states */
        {4, 1, 4, -1}, {4, 1, 0, -1},              /* bf16_stochastic_round */
    };
    /* Set the codes f to recipe `recipe`'s: the same values, but constants when `recipe` is
     * one (always inlined: with a lane loop inlined 11 times per flag combination gcc's
     * inlining budget ran out and the codes stayed loads); -9 leaves them as read. */
    static inline __attribute__((always_inline)) void fgd_apply_recipe(int *f, int roles, int recipe) {
        int r;
        if (recipe < 0 || recipe >= 11) return;
        f[0] = fgd_recipes[recipe][0];
        f[1] = f[2] = fgd_recipes[recipe][1];
        for (r = 3; r < roles - 1; r++) f[r] = fgd_recipes[recipe][2];
        f[roles - 1] = fgd_recipes[recipe][3];
    }
    """
    const int fgd_recipes[11][4]
    void apply_recipe "fgd_apply_recipe" (int* f, int roles, int recipe) nogil


cdef inline int recipe_of(const int* f, int roles) noexcept nogil:
    """The index of the recipe the codes ``f`` are (fgd_recipes), or -1."""
    cdef int i, r, ok
    for i in range(11):
        ok = (f[0] == fgd_recipes[i][0] and f[1] == fgd_recipes[i][1] and f[2] == f[1]
              and f[roles - 1] == fgd_recipes[i][3])
        for r in range(3, roles - 1):
            ok = ok and f[r] == fgd_recipes[i][2]
        if ok:
            return i
    return -1


