"""Test data and tolerances shared by the test modules (never zeros: random data)."""
import pickle
import tracemalloc

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
