"""Stream kernels: the memory roofline every update rule is measured against.

``stream(written, read)`` walks float32 arrays with a rule's access pattern and trivial
arithmetic: ``read`` is read once, each array of ``written`` is read and written once (w += r).
Adam's pattern is written=(p, m, v), read=g: 4 arrays read, 3 written, 28 bytes per element.
With nothing written it is a sum of ``read`` (a norm's pattern, 4 bytes per element), walked as
the norm kernel walks it: each thread reads its piece as several interleaved sequential streams
(one read-only stream per core is latency-bound; see fgd_sum*_range in _lanes.h), so the
read-only yardstick measures the memory, not one stream's misses in flight.
Parallelised exactly like the update kernels (same pieces, same threshold).
"""
from cython.parallel cimport prange
cimport numpy as cnp

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
