"""Stream kernels: the memory roofline every update rule is measured against.

``stream(written, read)`` walks float32 arrays with a rule's access pattern and trivial
arithmetic: ``read`` is read once, each array of ``written`` is read and written once (w += r).
Adam's pattern is written=(p, m, v), read=g: 4 arrays read, 3 written, 28 bytes per element.
With nothing written it is a sum of ``read`` (a norm's pattern, 4 bytes per element), walked as
the norm kernel walks it: each thread reads its piece as several interleaved sequential streams
(one read-only stream per core is latency-bound; see fgd_sum*_range in _lanes.h), so the
read-only yardstick measures the memory, not one stream's misses in flight.
Parallelised exactly like the update kernels (same pieces, same threshold).

``stream_formats(rw, read, out)`` is the same yardstick over arrays of mixed widths, for the
storage formats of kernels/CONTRACT.md's ``<rule>_many``: every array is 32-bit (float32) or
16-bit (its bits taken as bfloat16: loaded by a shift, stored truncated, the cheapest
conversion there is), ``rw`` are read and written once, ``read`` read once (at most one array
of each width), ``out`` written once and never read (a 16-bit copy of a master param; at most
one of each width). Bytes per element: 2 x the widths of ``rw`` + the widths of ``read`` and
``out``: bf16 AdamW (p, m, v, g) 14, master weights (f32 p, m, v; bf16 g in, bf16 copy out) 28.
One pass walks every array side by side in blocks of FGD_SF_BLOCK elements (the reads summed
into a block buffer in L1, then each written array's block): each array streams once, in order,
interleaved with the others, as in a fused update loop.

The quantized states of codes 5-8 (CONTRACT.md, issue 15) are ``rw`` arrays too, told apart by
their length (n: the length of ``read[0]``): a uint8 array of n elements is an 8-bit state's
codes (a byte per element, ``+=`` the block's values cut to a byte); of ``(n + 1) // 2`` bytes
a 4-bit state's packed codes (byte k belongs to element 2k, as two codes a byte are stored); a
float32 array of ``ceil(n / 256)`` or ``ceil(n / 128)`` elements a state's absmax (element j
read and written by the block holding element 256 j or 128 j). (For n = 1 every reading
moves the same bytes.) 8-bit AdamW with float32 p and g: 16 bytes per element plus 2 x 2 x 4 /
256 of absmax.
"""
from cython.parallel cimport prange
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t

from _arrays cimport data_of
from _parallel cimport piece_start, threads_for

cnp.import_array()

cdef enum:
    MAX_WRITTEN = 5

cdef extern from *:
    """
    #include <string.h>
    #include <stddef.h>
    #define FGD_STREAM_WAYS 4   /* as FGD_STREAMS in _lanes.h */
    typedef float fgd_stream_v8f __attribute__((vector_size(32)));
    /* Sum of r[0, n): FGD_STREAM_WAYS equal runs summed side by side, 16 float lanes each. */
    static float fgd_stream_sum(const float* r, ptrdiff_t n) {
        fgd_stream_v8f a[FGD_STREAM_WAYS][2];
        ptrdiff_t per = n / FGD_STREAM_WAYS / 16 * 16, i;
        float l[16], total = 0;
        int j, k;
        for (k = 0; k < FGD_STREAM_WAYS; k++) {
            fgd_stream_v8f z = {0, 0, 0, 0, 0, 0, 0, 0};
            a[k][0] = z; a[k][1] = z;
        }
        for (i = 0; i < per; i += 16) {
            for (k = 0; k < FGD_STREAM_WAYS; k++) {
                fgd_stream_v8f u, v;
                memcpy(&u, r + k * per + i, 32); memcpy(&v, r + k * per + i + 8, 32);
                a[k][0] += u; a[k][1] += v;
            }
        }
        for (k = 0; k < FGD_STREAM_WAYS; k++) {
            memcpy(l, &a[k][0], 32); memcpy(l + 8, &a[k][1], 32);
            for (j = 0; j < 16; j++) total += l[j];
        }
        for (i = FGD_STREAM_WAYS * per; i < n; i++) total += r[i];
        return total;
    }
    """
    float fgd_stream_sum(const float* r, Py_ssize_t n) noexcept nogil


cdef double _stream_piece(float** w, int nw, const float* r, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef float x
    if nw == 0:
        return fgd_stream_sum(r + lo, hi - lo)
    # One fused loop per pattern, as an update kernel is: every array streams once, side by side.
    cdef float* w0 = w[0]
    cdef float* w1 = w[1 if nw > 1 else 0]
    cdef float* w2 = w[2 if nw > 2 else 0]
    cdef float* w3 = w[3 if nw > 3 else 0]
    cdef float* w4 = w[4 if nw > 4 else 0]
    if nw == 1:
        for i in range(lo, hi):
            w0[i] += r[i]
    elif nw == 2:
        for i in range(lo, hi):
            x = r[i]
            w0[i] += x
            w1[i] += x
    elif nw == 3:
        for i in range(lo, hi):
            x = r[i]
            w0[i] += x
            w1[i] += x
            w2[i] += x
    elif nw == 4:
        for i in range(lo, hi):
            x = r[i]
            w0[i] += x
            w1[i] += x
            w2[i] += x
            w3[i] += x
    else:
        for i in range(lo, hi):
            x = r[i]
            w0[i] += x
            w1[i] += x
            w2[i] += x
            w3[i] += x
            w4[i] += x
    return 0


def stream(list written, cnp.ndarray read):
    """Read ``read`` once and add it into every array of ``written``; return the sum when none."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(read), lo, hi
    cdef float* w[MAX_WRITTEN]
    cdef int nw = len(written), j, t, nthreads
    cdef const float* r = <const float*>data_of(read, n, cnp.NPY_FLOAT32, False)
    cdef double total = 0
    if nw > MAX_WRITTEN:
        raise ValueError(f"at most {MAX_WRITTEN} written arrays")
    for j in range(nw):
        w[j] = <float*>data_of(written[j], n, cnp.NPY_FLOAT32)
    nthreads = threads_for(n)
    with nogil:
        for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
            lo = piece_start(n, nthreads, t)
            hi = piece_start(n, nthreads, t + 1)
            total += _stream_piece(w, nw, r, lo, hi)
    return total


# --- mixed widths: stream_formats --------------------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    #define FGD_SF_BLOCK 128
    #define FGD_SF_MAX 5
    typedef struct {
        int n32, n16, n8, n4, ns;           /* read-write arrays of each width */
        float* w32[FGD_SF_MAX];
        uint16_t* w16[FGD_SF_MAX];
        uint8_t* w8[FGD_SF_MAX];            /* 8-bit codes, a byte per element */
        uint8_t* w4[FGD_SF_MAX];            /* 4-bit codes, byte k for elements 2k, 2k + 1 */
        float* ws[FGD_SF_MAX];              /* absmax: one float per ``sblock`` elements */
        ptrdiff_t sblock[FGD_SF_MAX];
        const float* r32;                   /* read-only arrays (NULL: none of that width) */
        const uint16_t* r16;
        float* o32;                         /* write-only arrays (NULL: none) */
        uint16_t* o16;
    } fgd_sf_t;

    typedef uint16_t fgd_sf_u16 __attribute__((aligned(1), may_alias));

    static inline __attribute__((always_inline)) float fgd_sf_load16(uint16_t b) {
        uint32_t u = (uint32_t)b << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    static inline __attribute__((always_inline)) uint16_t fgd_sf_store16(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return (uint16_t)(u >> 16);
    }

    /* One block [b, b + m) of every array; m a constant where inlined with FGD_SF_BLOCK. */
    static inline __attribute__((always_inline)) float fgd_sf_block(const fgd_sf_t* s, ptrdiff_t b,
                                                                     ptrdiff_t m, float* x,
                                                                     uint8_t* xb) {
        ptrdiff_t i, k;
        int j;
        float total = 0;
        if (s->r32 && s->r16) {
            const float* r = s->r32 + b;
            const uint16_t* h = s->r16 + b;
            for (i = 0; i < m; i++) x[i] = r[i] + fgd_sf_load16(h[i]);
        } else if (s->r32) {
            const float* r = s->r32 + b;
            for (i = 0; i < m; i++) x[i] = r[i];
        } else {
            const uint16_t* h = s->r16 + b;
            for (i = 0; i < m; i++) x[i] = fgd_sf_load16(h[i]);
        }
        for (j = 0; j < s->n32; j++) {
            float* w = s->w32[j] + b;
            for (i = 0; i < m; i++) w[i] += x[i];
        }
        for (j = 0; j < s->n16; j++) {
            uint16_t* w = s->w16[j] + b;
            for (i = 0; i < m; i++) w[i] = fgd_sf_store16(fgd_sf_load16(w[i]) + x[i]);
        }
        if (s->n8 || s->n4) {
            for (i = 0; i < m; i++) xb[i] = (uint8_t)fgd_sf_store16(x[i]);
            xb[m] = 0;
        }
        for (j = 0; j < s->n8; j++) {
            uint8_t* w = s->w8[j] + b;
            for (i = 0; i < m; i++) w[i] = (uint8_t)(w[i] + xb[i]);
        }
        if (s->n4) {                        /* the bytes k of the elements 2k in [b, b + m) */
            ptrdiff_t odd = b & 1, nk = (m - odd + 1) / 2;
            /* xb[2k] as the low byte of the 16-bit word k (little-endian; big-endian: xb[2k + 1],
               the same bytes moved): contiguous loads, where a stride-2 byte loop ran at 2/3 of
               the memory's speed */
            const fgd_sf_u16* even = (const fgd_sf_u16*)(xb + odd);
            for (j = 0; j < s->n4; j++) {
                uint8_t* w = s->w4[j] + (b + 1) / 2;
                for (k = 0; k < nk; k++) w[k] = (uint8_t)(w[k] + (uint8_t)even[k]);
            }
        }
        for (j = 0; j < s->ns; j++) {       /* the absmax of the block starting in [b, b + m) */
            ptrdiff_t q = s->sblock[j], first = (b + q - 1) / q * q;
            if (first < b + m) s->ws[j][first / q] += x[first - b];
        }
        if (s->o32) {
            float* o = s->o32 + b;
            for (i = 0; i < m; i++) o[i] = x[i];
        }
        if (s->o16) {
            uint16_t* o = s->o16 + b;
            for (i = 0; i < m; i++) o[i] = fgd_sf_store16(x[i]);
        }
        if (!(s->n32 || s->n16 || s->n8 || s->n4 || s->ns || s->o32 || s->o16))
            for (i = 0; i < m; i++) total += x[i];
        return total;
    }

    static double fgd_sf_piece(const fgd_sf_t* s, ptrdiff_t lo, ptrdiff_t hi) {
        float x[FGD_SF_BLOCK] __attribute__((aligned(64)));
        uint8_t xb[FGD_SF_BLOCK + 1] __attribute__((aligned(64)));   /* + 1: word k of an odd tail */
        double total = 0;
        ptrdiff_t b = lo;
        for (; b + FGD_SF_BLOCK <= hi; b += FGD_SF_BLOCK) total += fgd_sf_block(s, b, FGD_SF_BLOCK, x, xb);
        if (b < hi) total += fgd_sf_block(s, b, hi - b, x, xb);
        return total;
    }
    """
    ctypedef struct fgd_sf_t:
        int n32, n16, n8, n4, ns
        float* w32[5]
        uint16_t* w16[5]
        uint8_t* w8[5]
        uint8_t* w4[5]
        float* ws[5]
        Py_ssize_t sblock[5]
        const float* r32
        const uint16_t* r16
        float* o32
        uint16_t* o16
    double fgd_sf_piece(const fgd_sf_t* s, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil


cdef void* _raw(cnp.ndarray a, Py_ssize_t n, bint writable) except NULL:
    """The data of a C-contiguous array of n elements of 1, 2 or 4 bytes (any dtype), else raise."""
    if (cnp.PyArray_SIZE(a) != n or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a)) or cnp.PyArray_ITEMSIZE(a) not in (1, 2, 4)):
        raise ValueError("stream_formats arrays must be C-contiguous, of 1, 2 or 4 bytes per element, of "
                         "one length (or, read-write, a quantized state's codes or absmax of it), the "
                         "written ones writable")
    return cnp.PyArray_DATA(a)


cdef int _room(int count) except -1:
    if count == MAX_WRITTEN:
        raise ValueError(f"at most {MAX_WRITTEN} read-write arrays of each width")
    return count


cdef int _add_rw(fgd_sf_t* s, cnp.ndarray a, Py_ssize_t n) except -1:
    """File the read-write array ``a`` by its width and length (module docstring)."""
    cdef Py_ssize_t size = cnp.PyArray_SIZE(a)
    cdef int item = cnp.PyArray_ITEMSIZE(a)
    if size == n and item == 4:
        s.w32[_room(s.n32)] = <float*>_raw(a, size, True)
        s.n32 += 1
    elif size == n and item == 2:
        s.w16[_room(s.n16)] = <uint16_t*>_raw(a, size, True)
        s.n16 += 1
    elif size == n and item == 1:
        s.w8[_room(s.n8)] = <uint8_t*>_raw(a, size, True)
        s.n8 += 1
    elif item == 1 and size == (n + 1) // 2:
        s.w4[_room(s.n4)] = <uint8_t*>_raw(a, size, True)
        s.n4 += 1
    elif item == 4 and (size == (n + 255) // 256 or size == (n + 127) // 128):
        s.ws[_room(s.ns)] = <float*>_raw(a, size, True)
        s.sblock[s.ns] = 256 if size == (n + 255) // 256 else 128
        s.ns += 1
    else:
        _raw(a, n, True)        # raises with the reason
        raise ValueError("stream_formats: a read-write array of another length")
    return 0


def stream_formats(list rw, list read, list out=None):
    """Read ``read`` (one array per width at most) and add it into every array of ``rw``; store
    it into every array of ``out`` (one per width at most). 16-bit arrays are bfloat16 bits;
    ``rw`` may hold quantized states' codes and absmax (module docstring: told by length).
    Returns the sum of what was read when nothing is written."""
    cdef fgd_sf_t s
    cdef cnp.ndarray a
    cdef Py_ssize_t n, lo, hi
    cdef int t, nthreads
    cdef double total = 0
    out = out or []
    if not read:
        raise ValueError("stream_formats reads at least one array")
    n = cnp.PyArray_SIZE(read[0])
    s.n32 = s.n16 = s.n8 = s.n4 = s.ns = 0
    s.r32 = NULL
    s.r16 = NULL
    s.o32 = NULL
    s.o16 = NULL
    for a in rw:
        _add_rw(&s, a, n)
    for a in read:
        if cnp.PyArray_ITEMSIZE(a) == 4 and s.r32 == NULL:
            s.r32 = <const float*>_raw(a, n, False)
        elif cnp.PyArray_ITEMSIZE(a) == 2 and s.r16 == NULL:
            s.r16 = <const uint16_t*>_raw(a, n, False)
        else:
            raise ValueError("stream_formats reads at most one array of each width (2 or 4 bytes)")
    for a in out:
        if cnp.PyArray_ITEMSIZE(a) == 4 and s.o32 == NULL:
            s.o32 = <float*>_raw(a, n, True)
        elif cnp.PyArray_ITEMSIZE(a) == 2 and s.o16 == NULL:
            s.o16 = <uint16_t*>_raw(a, n, True)
        else:
            raise ValueError("stream_formats writes at most one out array of each width (2 or 4 bytes)")
    nthreads = threads_for(n)
    with nogil:
        for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
            lo = piece_start(n, nthreads, t)
            hi = piece_start(n, nthreads, t + 1)
            total += fgd_sf_piece(&s, lo, hi)
    return total
