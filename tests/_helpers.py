"""Test data and tolerances shared by the test modules (never zeros: random data)."""
import os
import pickle
import tracemalloc

import numpy as np
import pytest

import fastgd

# Fixed, not fastgd.available_backends(): a compiled backend refused at import (a failed build,
# an extension built for another CPU) must fail its tests, not make them vanish from the run.
COMPILED = ("cython", "numba")
BACKENDS = COMPILED + ("numpy",)
# Set to 1 where a compiled backend is knowingly absent (e.g. a platform without a C compiler):
# its tests are then skipped, with the reason, instead of failing.
ALLOW_MISSING_ENV = "FASTGD_ALLOW_MISSING_BACKEND"
DTYPES = (np.float32, np.float64)


def missing_allowed():
    return os.environ.get(ALLOW_MISSING_ENV, "").strip() not in ("", "0")


def require_backend(*names):
    """Fail the calling test, with fastgd.backend_status()'s reason, unless every backend in
    ``names`` is usable here; with FASTGD_ALLOW_MISSING_BACKEND=1, skip it instead."""
    status = fastgd.backend_status()
    for name in names:
        ok, reason = status.get(name, (False, "no such backend"))
        if not ok:
            msg = f"backend {name!r} is unusable here: {reason}"
            if missing_allowed():
                pytest.skip(f"{msg} ({ALLOW_MISSING_ENV} is set)")
            pytest.fail(f"{msg} (set {ALLOW_MISSING_ENV}=1 to skip its tests instead)", pytrace=False)


def usable(names):
    """The backends of ``names`` usable here: for a subprocess that runs several at once (each
    test of its report then calls require_backend for its own)."""
    status = fastgd.backend_status()
    return [n for n in names if status[n][0]]
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


def peak_bytes_of_steps(opt, grads, steps):
    """Peak bytes traced while ``opt`` takes ``steps`` steps, after 3 warm-up steps (state
    created, kernels compiled); the tests of "a step allocates no array" compare it to a bound."""
    for _ in range(3):
        opt.step(grads)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(steps):
            opt.step(grads)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def resume_from_state_dict(make, params, grads, split):
    """Checkpoint round trip: ``make(params)`` steps through ``grads``, its state_dict saved
    (through pickle) after ``split`` steps; a fresh ``make(snapshot, lr=123.0)`` on the parameters
    as they were then loads it (its param groups must replace the wrong lr) and takes the same
    remaining steps. Asserts both end on bit-identical parameters; returns (opt, resumed)."""
    opt = make(params)
    for g in grads[:split]:
        opt.step(g)
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    snapshot = [p.copy() for p in params]
    for g in grads[split:]:
        opt.step(g)
    resumed = make(snapshot, lr=123.0)
    resumed.load_state_dict(sd)
    for g in grads[split:]:
        resumed.step(g)
    for a, b in zip(params, snapshot):
        np.testing.assert_array_equal(a, b)
    return opt, resumed


def run_at_thread_counts(run, counts=(1, 2)):
    """[run(n) with fastgd set to n threads, for n in counts]; the thread setting is restored
    afterwards, whatever happens (the tests of "the same bits at any thread count")."""
    saved = fastgd.get_num_threads()
    try:
        results = []
        for n in counts:
            fastgd.set_num_threads(n)
            results.append(run(n))
        return results
    finally:
        fastgd.set_num_threads(saved)
