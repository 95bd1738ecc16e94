"""MultiSteps: k micro-batches averaged, the last one fused into the optimizer's step."""
import pickle

import numpy as np
import pytest

import fastgd
from fastgd import functional as F


def _regression(rng, n, d, dtype):
    X = rng.standard_normal((n, d)).astype(dtype)
    w_true = rng.standard_normal(d).astype(dtype)
    y = (X @ w_true + 0.1 * rng.standard_normal(n)).astype(dtype)
    return X, y


def _grad(w, b, X, y):
    """Gradient of the mean squared error 0.5 * mean((X w + b - y)^2)."""
    r = X @ w + b - y
    return [(X.T @ r / len(y)).astype(w.dtype), np.asarray([r.mean()], dtype=w.dtype)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_k_micro_batches_equal_one_big_batch(backend, rng, dtype, k, clip):
    b, d, steps = 8, 5, 6
    X, y = _regression(rng, steps * k * b, d, dtype)
    w0, b0 = rng.standard_normal(d).astype(dtype), np.zeros(1, dtype)
    big = [w0.copy(), b0.copy()]
    micro = [w0.copy(), b0.copy()]
    opt_big = fastgd.Adam(big, lr=0.05, max_grad_norm=clip)
    acc = fastgd.MultiSteps(fastgd.Adam(micro, lr=0.05, max_grad_norm=clip), k)
    for s in range(steps):
        rows = slice(s * k * b, (s + 1) * k * b)
        opt_big.step(_grad(*big, X[rows], y[rows]))
        for j in range(k):
            r = slice(s * k * b + j * b, s * k * b + (j + 1) * b)
            stepped = acc.step(_grad(*micro, X[r], y[r]))
            assert stepped == (j == k - 1)
        if clip is not None:
            # The clip is of the mean gradient: the same norm as the big batch's.
            assert acc.optimizer.last_grad_norm == pytest.approx(opt_big.last_grad_norm,
                                                                 rel=1e-5 if dtype == np.float32 else 1e-12)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(micro, big):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    assert acc.gradient_step == steps and acc.optimizer.state[0]["step"] == steps


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_fused_last_micro_batch_equals_accumulate_then_step(backend, rng, dtype):
    shapes = [(40_000,), (3, 7)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    other = [p.copy() for p in params]
    k = 3
    multi = fastgd.MultiSteps(fastgd.AdamW(params, lr=0.01, max_grad_norm=10.0), k)
    plain = fastgd.AdamW(other, lr=0.01, max_grad_norm=10.0)
    for _ in range(2):
        micro = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(k)]
        for gs in micro:
            multi.step(gs)
        acc = [np.zeros(s, dtype) for s in shapes]
        for gs in micro[:-1]:
            F.accumulate_(acc, gs)
        mean = [a + g for a, g in zip(acc, micro[-1])]     # the kernel adds in the dtype, then scales
        plain.step(mean, grad_scale=1.0 / k)
        assert multi.optimizer.last_grad_norm == pytest.approx(plain.last_grad_norm, rel=1e-12)
    for a, e in zip(params, other):
        np.testing.assert_array_equal(a, e)
    # The accumulators were zeroed by the fused pass.
    assert all(not a.any() for a in multi._acc.values())


def test_nonfinite_micro_batch_skips_and_discards(backend, rng):
    params = [rng.standard_normal(10)]
    multi = fastgd.MultiSteps(fastgd.Adam(params, max_grad_norm=1.0), 2)
    bad = rng.standard_normal(10)
    bad[3] = np.nan
    before = params[0].copy()
    assert not multi.step([bad])
    assert not multi.step([rng.standard_normal(10)])     # the k-th call: norm is NaN, skipped
    np.testing.assert_array_equal(params[0], before)
    assert multi.optimizer.skipped_steps == 1 and multi.optimizer.state == {}
    assert multi.mini_step == 0 and not multi._acc[0].any()   # discarded, no poison later
    multi.step([rng.standard_normal(10)])
    assert multi.step([rng.standard_normal(10)])
    assert np.all(params[0] != before)


def test_error_if_nonfinite_raises_and_keeps_the_accumulator(backend, rng):
    params = [rng.standard_normal(10)]
    multi = fastgd.MultiSteps(fastgd.Adam(params, max_grad_norm=1.0, error_if_nonfinite=True), 2)
    g1 = rng.standard_normal(10)
    multi.step([g1])
    bad = rng.standard_normal(10)
    bad[0] = np.inf
    with pytest.raises(RuntimeError):
        multi.step([bad])
    assert multi.mini_step == 1
    np.testing.assert_array_equal(multi._acc[0], g1)


def test_grad_scale_none_grads_and_sum_mode(backend, rng):
    p = [rng.standard_normal(6), rng.standard_normal(4)]
    q = [a.copy() for a in p]
    multi = fastgd.MultiSteps(fastgd.Adam(p, lr=0.1), 3, use_grad_mean=False)
    plain = fastgd.Adam(q, lr=0.1)
    g = [[rng.standard_normal(6), rng.standard_normal(4)] for _ in range(3)]
    multi.step(g[0], grad_scale=0.5)
    multi.step([g[1][0], None], grad_scale=0.5)          # a parameter without a gradient this time
    multi.step([None, g[2][1]], grad_scale=2.0)          # a different scale on the last one
    plain.step([0.5 * g[0][0] + 0.5 * g[1][0], 0.5 * g[0][1] + 2.0 * g[2][1]])
    for a, e in zip(p, q):
        np.testing.assert_allclose(a, e, rtol=1e-13)
    assert all(not a.any() for a in multi._acc.values())


def test_state_dict_round_trip_mid_accumulation(backend, rng):
    params = [rng.standard_normal(8)]
    grads = [[rng.standard_normal(8)] for _ in range(7)]
    multi = fastgd.MultiSteps(fastgd.Adam(params, lr=0.1), 3)
    for g in grads[:4]:
        multi.step(g)
    sd = pickle.loads(pickle.dumps(multi.state_dict()))
    snapshot = [params[0].copy()]
    for g in grads[4:]:
        multi.step(g)
    again = fastgd.MultiSteps(fastgd.Adam(snapshot, lr=0.1), 3)
    again.load_state_dict(sd)
    assert again.mini_step == 1
    for g in grads[4:]:
        again.step(g)
    np.testing.assert_array_equal(snapshot[0], params[0])


def test_bad_arguments(rng):
    opt = fastgd.Adam([np.zeros(3)])
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every_k"):
            fastgd.MultiSteps(opt, k)
    with pytest.raises(TypeError):
        fastgd.MultiSteps(object(), 2)
    multi = fastgd.MultiSteps(opt, 2)
    with pytest.raises(ValueError, match="gradients"):
        multi.step([np.zeros(3), np.zeros(3)])
    with pytest.raises(TypeError, match="dtype"):
        multi.step([np.zeros(3, np.float32)])
    assert multi.mini_step == 0 and multi._acc == {}
