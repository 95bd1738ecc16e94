"""Optimizer behaviour: param groups, state_dict round trips, threads, allocation, backends."""
import numpy as np
import pytest

import fastgd
from fastgd import functional as F

from _helpers import COMPILED, DTYPES, require_backend, peak_bytes_of_steps, resume_from_state_dict, run_at_thread_counts


def _grads(rng, params, steps, dtype):
    return [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(steps)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls,kw", [(fastgd.Adam, {}), (fastgd.Adam, dict(amsgrad=True, weight_decay=0.1)),
                                    (fastgd.AdamW, {}), (fastgd.AdamW, dict(amsgrad=True, maximize=True))])
def test_state_dict_resume_is_bit_identical(backend, rng, dtype, cls, kw):
    shapes = [(17,), (4, 5)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = _grads(rng, params, 30, dtype)
    # A fresh optimizer on the saved parameters continues identically.
    _, opt2 = resume_from_state_dict(lambda ps, lr=1e-2: cls(ps, lr=lr, **kw), params, grads, 15)
    assert opt2.param_groups[0]["lr"] == 1e-2


def test_state_dict_is_a_snapshot(rng):
    params = [rng.standard_normal(8)]
    opt = fastgd.Adam(params)
    opt.step([rng.standard_normal(8)])
    sd = opt.state_dict()
    saved = sd["state"][0]["exp_avg"].copy()
    opt.step([rng.standard_normal(8)])
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)
    assert sd["param_groups"][0]["params"] == [0]


def test_load_state_dict_refuses_mismatch_and_changes_nothing(rng):
    params = [rng.standard_normal(8)]
    opt = fastgd.Adam(params)
    opt.step([rng.standard_normal(8)])
    good = opt.state_dict()
    other = fastgd.Adam([rng.standard_normal(9)])
    other.step([rng.standard_normal(9)])
    before = other.state_dict()
    bad_cases = [
        (good, "shape"),
        ({"state": {}, "param_groups": []}, "param groups"),
        ({"state": {}}, "keys"),
        ({"state": {0: {"step": 1}}, "param_groups": before["param_groups"]}, "keys"),
        ({"state": {5: before["state"][0]}, "param_groups": before["param_groups"]}, "no group"),
        ({"state": before["state"], "param_groups": [dict(before["param_groups"][0], lr=-1.0)]}, "lr"),
        ({"state": before["state"], "param_groups": [dict(before["param_groups"][0], momentum=0.9)]}, "momentum"),
    ]
    for sd, match in bad_cases:
        with pytest.raises((ValueError, TypeError), match=match):
            other.load_state_dict(sd)
        after = other.state_dict()
        assert after["param_groups"] == before["param_groups"]
        np.testing.assert_array_equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_param_groups_have_their_own_options(backend, rng):
    a, b = rng.standard_normal(10), rng.standard_normal(10)
    a0, b0 = a.copy(), b.copy()
    opt = fastgd.Adam([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=0.1)
    opt.step([rng.standard_normal(10), rng.standard_normal(10)])
    assert not np.array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    # A schedule changes lr through the mutable param_groups.
    opt.param_groups[1]["lr"] = 0.1
    opt.step([rng.standard_normal(10), rng.standard_normal(10)])
    assert not np.array_equal(b, b0)


def test_optimizer_equals_functional(backend, rng):
    p = rng.standard_normal(101)
    q = p.copy()
    m, v = np.zeros(101), np.zeros(101)
    opt = fastgd.AdamW([p], lr=0.01, weight_decay=0.1)
    for t in range(1, 11):
        g = rng.standard_normal(101)
        opt.step([g])
        F.adam_(q, g, m, v, step=t, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_results_do_not_depend_on_thread_count(backend, rng, dtype):
    n = 300_007  # well above the parallel threshold, odd so the last piece is ragged
    start = [rng.standard_normal(n).astype(dtype) for _ in range(1)]
    grads = _grads(rng, start, 5, dtype)

    def run(threads):
        params = [a.copy() for a in start]
        opt = fastgd.Adam(params, lr=1e-2, amsgrad=True, weight_decay=0.01)
        for g in grads:
            opt.step(g)
        return params[0]

    results = run_at_thread_counts(run, (1, 2, 3))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_num_threads_setting():
    saved = fastgd.get_num_threads()
    try:
        fastgd.set_num_threads(1)
        assert fastgd.get_num_threads() == 1
        with pytest.raises(ValueError, match="num_threads"):
            fastgd.set_num_threads(0)
    finally:
        fastgd.set_num_threads(saved)


@pytest.mark.parametrize("n", [10_000, 100_003])
def test_step_allocates_nothing_once_state_exists(backend, rng, n):
    params = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    peak = peak_bytes_of_steps(fastgd.AdamW(params, amsgrad=True), grads, 50)
    # A few small Python objects per step (views, a work list) come and go; no array-sized
    # allocation may happen: one array of n float32 is 4*n >= 40,000 bytes.
    assert peak < 8192, f"step allocated {peak} bytes at peak"


def test_backend_registry():
    assert "numpy" in fastgd.available_backends()
    status = fastgd.backend_status()
    assert set(status) == {"cython", "numba", "numpy"}
    with pytest.raises(ValueError, match="backend must be one of"):
        fastgd.set_backend("fortran")
    before = fastgd.get_backend()
    with fastgd.use_backend("numpy"):
        assert fastgd.get_backend() == "numpy"
    assert fastgd.get_backend() == before


@pytest.mark.parametrize("name", COMPILED)
def test_each_compiled_backend_is_really_used(name, rng):
    """The kernel that runs is the backend's own, not the reference."""
    require_backend(name)
    from fastgd.backends import kernel
    fn = kernel("adam", name)
    assert fn.__module__ != "fastgd._reference"
