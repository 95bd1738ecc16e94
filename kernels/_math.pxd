# Elementwise maths shared by the Cython kernels, resolved at compile time per fused type.
from cython cimport floating
from libc.math cimport sqrt, sqrtf


cdef inline floating _sqrt(floating x) noexcept nogil:
    """sqrt in the element's own precision (sqrtf for float32: no round trip through double)."""
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)
