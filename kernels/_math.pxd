# Elementwise maths shared by the Cython kernels, resolved at compile time per fused type.
from cython cimport floating
from libc.math cimport sqrt, sqrtf


cdef inline floating _sqrt(floating x) noexcept nogil:
    """sqrt in the element's own precision (sqrtf for float32: no round trip through double)."""
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _grad(const floating* g, floating* acc, Py_ssize_t i, floating gs,
                           bint use_acc) noexcept nogil:
    """The gradient a rule sees at i: gs * g[i], or with use_acc gs * (acc[i] + g[i]) and acc[i] = 0
    (the last micro-batch of gradient accumulation fused into the step; see CONTRACT.md).

    Inlined into each *_piece loop, where use_acc is loop invariant (or a constant in the loops
    unswitched by hand), so gcc still unswitches it and vectorises both copies.
    """
    cdef floating gi
    if use_acc:
        gi = (acc[i] + g[i]) * gs
        acc[i] = 0
    else:
        gi = g[i] * gs
    return gi


cdef inline floating _adam_moments(floating* m, floating* v, Py_ssize_t i, floating gi,
                                   floating omb1, floating b2, floating omb2,
                                   floating* vi) noexcept nogil:
    """Adam's moments at i (Adam, NAdam, RAdam): m += (1 - b1) * (g - m), v = b2 * v + (1 - b2) * g * g.

    Stores both; returns the new m, and the new v through vi (a local of the caller's loop,
    promoted to a register once inlined).
    """
    cdef floating mi = m[i] + omb1 * (gi - m[i])
    vi[0] = b2 * v[i] + omb2 * gi * gi
    m[i] = mi
    v[i] = vi[0]
    return mi
