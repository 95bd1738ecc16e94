"""Adam/AdamW/AMSGrad: every compiled backend against the NumPy reference, and against torch."""
import itertools

import numpy as np
import pytest

import fastgd
from fastgd import functional as F

from _helpers import DTYPES, LENGTHS, assert_close, random_arrays

OPTIONS = [
    dict(weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx, grad_scale=gs)
    for wd, dec, ams, mx, gs in itertools.product((0.0, 0.05), (False, True), (False, True),
                                                  (False, True), (1.0, 0.37))
    if not (dec and wd == 0.0)
]


def _run(backend, n, dtype, opts, steps, rng):
    """Run `steps` functional Adam steps on one backend; return the final arrays."""
    p, m, v, vmax = random_arrays(rng, n, dtype, 4, positive=(2, 3))
    m *= 0.1
    grads = random_arrays(rng, n, dtype, steps)
    with fastgd.use_backend(backend):
        for t, g in enumerate(grads, start=1):
            F.adam_(p, g, m, v, step=t, lr=1e-2, betas=(0.8, 0.95), eps=1e-6,
                    max_exp_avg_sq=vmax, **opts)
    return p, m, v, vmax


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_adam_matches_reference(backend, n, dtype, opts):
    steps = 50 if n < 100_000 else 12
    expected = _run("numpy", n, dtype, opts, steps, np.random.default_rng(n))
    actual = _run(backend, n, dtype, opts, steps, np.random.default_rng(n))
    for name, a, e in zip(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), actual, expected):
        assert a.dtype == dtype
        assert_close(a, e, dtype, f"{name} of adam {opts} on {backend}, {dtype.__name__}, n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_adam_moves_parameters(backend, dtype, rng):
    """Guards the comparison above from passing vacuously (e.g. both sides doing nothing)."""
    p, m, v = random_arrays(rng, 1023, dtype, 3, positive=(2,))
    before = p.copy()
    F.adam_(p, rng.standard_normal(1023).astype(dtype), m, v, step=1, lr=0.1)
    assert np.all(p != before)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_adam_any_shape_updates_in_place(backend, dtype, rng):
    p = rng.standard_normal((3, 5, 7)).astype(dtype)
    g = rng.standard_normal((3, 5, 7)).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref = [a.copy() for a in (p, g, m, v)]
    F.adam_(p, g, m, v, step=1)
    with fastgd.use_backend("numpy"):
        F.adam_(ref[0], ref[1], ref[2], ref[3], step=1)
    assert p.shape == (3, 5, 7)
    assert_close(p, ref[0], dtype)


def test_empty_arrays_are_a_no_op(backend, rng):
    """Empty views into real buffers: a kernel that wrote at n = 0 would change a buffer."""
    buffers = [rng.standard_normal(8).astype(np.float32) for _ in range(4)]
    before = [b.copy() for b in buffers]
    p, g, m, v = (b[3:3] for b in buffers)
    F.adam_(p, g, m, v, step=1, amsgrad=True, max_exp_avg_sq=v[:0].copy(), weight_decay=0.1)
    for b, b0 in zip(buffers, before):
        np.testing.assert_array_equal(b, b0)
    assert p.shape == (0,) and p.base is buffers[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", (7, 100_003))
def test_fused_accumulation_in_the_kernel(backend, dtype, n, rng):
    """use_acc: the kernel steps with gs * (acc + grad) and zeroes acc in the same pass."""
    from fastgd.backends import kernel
    p, g, acc, m = random_arrays(rng, n, dtype, 4)
    v, vmax = random_arrays(rng, n, dtype, 2, positive=(0, 1))
    ref = [a.copy() for a in (p, g, acc, m, v, vmax)]
    args = (0.5, True, True, 1e-2, 0.9, 0.99, 1e-8, 0.01, True, True, 0.3, 0.2)
    kernel("adam", backend)(p, g, acc, m, v, vmax, *args)
    kernel("adam", "numpy")(*ref, *args)
    assert not np.any(acc)
    assert_close(p, ref[0], dtype)
    assert_close(m, ref[3], dtype)
