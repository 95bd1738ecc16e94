"""Test data and tolerances shared by the test modules (never zeros: random data)."""
import numpy as np
import fastgd

BACKENDS = fastgd.available_backends()
COMPILED = tuple(b for b in BACKENDS if b != "numpy")
DTYPES = (np.float32, np.float64)
LENGTHS = (1, 7, 1023, 100_003)

# Tolerances of a compiled backend against the reference over many steps: the kernels may
# contract a*b+c into one fused multiply-add (one rounding instead of two), so they agree with
# NumPy to a few ulps per step, not bitwise.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 1e-6, np.float64: 1e-14}


def random_arrays(rng, n, dtype, k, positive=()):
    """k random arrays of length n; those at indices in ``positive`` are > 0 (second moments)."""
    out = []
    for i in range(k):
        a = rng.standard_normal(n)
        if i in positive:
            a = np.abs(a) + 0.01
        out.append(a.astype(dtype))
    return out


def assert_close(actual, expected, dtype, what=""):
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=what)
