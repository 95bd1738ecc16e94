"""Norms and clipping: every backend against torch and the reference, determinism, bad inputs."""
import math

import numpy as np
import pytest

from fastgd import functional as F
from fastgd import _reference as ref
from fastgd.backends import kernel

from _helpers import BACKENDS, COMPILED, DTYPES, require_backend, run_at_thread_counts

torch = pytest.importorskip("torch")

NORM_TYPES = (2.0, 1.0, math.inf, 3.0, 0.5)
SHAPE_LISTS = {
    "one": [(1,)],
    "mixed": [(7,), (0,), (3, 5), (2, 1, 4), ()],
    "odd": [(4097,), (1,), (16,), (17,), (1023,)],
    "many": [(13,)] * 40,
    "big": [(300_007,)],
}


def _grads(rng, shapes, dtype, scale=1.0):
    return [np.asarray(rng.standard_normal(s) * scale, dtype=dtype) for s in shapes]


def _torch_params(grads):
    params = []
    for g in grads:
        p = torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True)
        p.grad = torch.from_numpy(g.copy())
        params.append(p)
    return params


def _torch_norm64(grads, p):
    """The exact-ish norm: torch over float64 copies (the oracle for the value)."""
    ts = [torch.from_numpy(g.astype(np.float64)).reshape(-1) for g in grads if g.size]
    if not ts:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat(ts), ord=p))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("shapes", ["one", "mixed", "odd", "many"])
def test_global_norm_matches_torch(backend, rng, dtype, norm_type, shapes):
    grads = _grads(rng, SHAPE_LISTS[shapes], dtype)
    got = F.global_norm(grads, norm_type)
    assert isinstance(got, float)
    # float32 data is accumulated in float64: as accurate as torch on float64 copies.
    assert got == pytest.approx(_torch_norm64(grads, norm_type), rel=1e-11)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("shapes,max_norm", [("odd", 0.5), ("many", 0.5), ("big", 0.5), ("odd", math.inf)])
def test_clip_grad_norm_matches_torch(backend, rng, dtype, norm_type, shapes, max_norm):
    grads = _grads(rng, SHAPE_LISTS[shapes], dtype)
    before = [g.copy() for g in grads]
    # The oracle is torch on float64 copies: torch sums float32 in float32 (off by up to 1e-4
    # relative on a million elements for p != 2), fastgd accumulates float32 in float64.
    params = _torch_params([g.astype(np.float64) for g in grads])
    expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type))
    got = F.clip_grad_norm_(grads, max_norm, norm_type=norm_type)
    assert got == pytest.approx(expected, rel=1e-11)
    for g, p, b in zip(grads, params, before):
        assert g.dtype == dtype
        if max_norm == math.inf:
            np.testing.assert_array_equal(g, b)  # coef 1: not touched
        np.testing.assert_allclose(g, p.grad.numpy().astype(dtype), rtol=1e-6 if dtype == np.float32 else 1e-12)
    if dtype == np.float32:
        t32 = float(torch.nn.utils.clip_grad_norm_(_torch_params(before), max_norm, norm_type=norm_type))
        assert got == pytest.approx(t32, rel=1e-3)


def test_clip_grad_norm_mixed_shapes_with_empty(backend, rng):
    # torch refuses the inf-norm of an empty tensor; everything else as torch.
    grads = _grads(rng, SHAPE_LISTS["mixed"], np.float64)
    params = _torch_params(grads)
    expected = float(torch.nn.utils.clip_grad_norm_(params, 0.1))
    assert F.clip_grad_norm_(grads, 0.1) == pytest.approx(expected, rel=1e-12)
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)
    assert F.global_norm([np.zeros(0), np.zeros((2, 0))], math.inf) == 0.0
    assert F.global_norm([]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("n", [7, 4097, 100_003])
def test_norm_partial_matches_reference(backend, rng, dtype, norm_type, n):
    x, y = _grads(rng, [(n,), (n,)], dtype)
    for use_y in (False, True):
        got = kernel("norm_partial")(x, y, use_y, norm_type)
        assert got == pytest.approx(ref.norm_partial(x, y, use_y, norm_type), rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [100_003, 500_003])
def test_norm_is_bitwise_identical_at_1_and_2_threads(backend, rng, dtype, n):
    x, y = _grads(rng, [(n,), (n,)], dtype)

    def run(threads):
        return ([kernel("norm_partial")(x, y, use_y, p).hex()
                 for p in NORM_TYPES for use_y in (False, True)]
                + [F.global_norm([x, y, x[:77]]).hex()])

    at_1, at_2 = run_at_thread_counts(run, (1, 2))
    assert at_1 == at_2


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_float32_norm_is_bitwise_identical_across_backends(rng, norm_type):
    require_backend(*COMPILED)
    x, y = _grads(rng, [(300_007,), (300_007,)], np.float32)
    for use_y in (False, True):
        got = {b: kernel("norm_partial", b)(x, y, use_y, norm_type).hex() for b in COMPILED}
        assert len(set(got.values())) == 1, got


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 7, 1023, 100_003])
def test_elementwise_kernels_match_reference(backend, rng, dtype, n):
    x, g = _grads(rng, [(n,), (n,)], dtype)
    for name, args in [("scale", (0.37,)), ("clamp", (-0.5, 0.25)), ("accumulate", (g, -0.7))]:
        a, e = x.copy(), x.copy()
        kernel(name)(a, *args)
        getattr(ref, name)(e, *args)
        # the kernels may fuse a multiply-add (one rounding instead of two)
        tol = 1e-6 if dtype == np.float32 else 1e-15
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_norm(backend, rng, norm_type, bad):
    grads = _grads(rng, [(5000,), (33,)], np.float32)
    grads[0][4321] = bad
    total = F.global_norm(grads, norm_type)
    assert not math.isfinite(total)
    if math.isnan(bad):
        assert math.isnan(total)
    else:
        assert total == math.inf
    before = [g.copy() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        F.clip_grad_norm_(grads, 1.0, norm_type, error_if_nonfinite=True)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)
    # Without the error, torch's behaviour: grads scaled by the NaN or 0 coefficient.
    params = _torch_params(before)
    torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type)
    F.clip_grad_norm_(grads, 1.0, norm_type)
    for g, p in zip(grads, params):
        np.testing.assert_array_equal(g, p.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_clip_grad_value_matches_torch(backend, rng, dtype):
    grads = _grads(rng, [(100_003,), (3, 4), (0,)], dtype, scale=2.0)
    grads[1][1, 1] = np.nan
    params = _torch_params(grads)
    torch.nn.utils.clip_grad_value_(params, 0.75)
    F.clip_grad_value_(grads, 0.75)
    for g, p in zip(grads, params):
        np.testing.assert_array_equal(g, p.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_accumulate(backend, rng, dtype):
    acc, g = _grads(rng, [(100_003,), (100_003,)], dtype)
    expected = acc + dtype(0.25) * g
    F.accumulate_(acc, g, 0.25)
    tol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(acc, expected, rtol=tol, atol=tol)
    accs = [np.zeros((2, 3), dtype), np.zeros(5, dtype)]
    grads = _grads(rng, [(2, 3), (5,)], dtype)
    F.accumulate_(accs, grads)
    F.accumulate_(accs, grads)
    for a, gr in zip(accs, grads):
        np.testing.assert_array_equal(a, 2 * gr)


def _bad_calls(rng):
    f32 = _grads(rng, [(10,), (4, 4)], np.float32)
    f64 = _grads(rng, [(10,)], np.float64)
    readonly = f32[0].copy()
    readonly.flags.writeable = False
    noncontig = rng.standard_normal((6, 6)).astype(np.float32)[:, ::2]
    return [
        (lambda g: F.clip_grad_norm_(g, 1.0), f32 + f64, TypeError, "one dtype"),
        (lambda g: F.global_norm(g), f32 + f64, TypeError, "one dtype"),
        (lambda g: F.clip_grad_norm_(g, 1.0), f32 + [noncontig], ValueError, "C-contiguous"),
        (lambda g: F.global_norm(g), f32 + [noncontig], ValueError, "C-contiguous"),
        (lambda g: F.clip_grad_norm_(g, 0.0), f32, ValueError, "max_norm"),
        (lambda g: F.clip_grad_norm_(g, -1.0), f32, ValueError, "max_norm"),
        (lambda g: F.clip_grad_norm_(g, math.nan), f32, ValueError, "max_norm"),
        (lambda g: F.clip_grad_norm_(g, 1.0, norm_type=0.0), f32, ValueError, "norm_type"),
        (lambda g: F.clip_grad_norm_(g, 1.0, norm_type=-2.0), f32, ValueError, "norm_type"),
        (lambda g: F.clip_grad_norm_(g, 1.0, norm_type="two"), f32, TypeError, "norm_type"),
        (lambda g: F.clip_grad_norm_(g, 1e-3), f32 + [readonly], ValueError, "read-only"),
        (lambda g: F.clip_grad_norm_(g, 1e-3), f32 + [np.arange(3)], TypeError, "float32"),
        (lambda g: F.clip_grad_norm_(g, 1e-3, error_if_nonfinite=1), f32, TypeError, "error_if_nonfinite"),
        (lambda g: F.clip_grad_value_(g, -1.0), f32, ValueError, "clip_value"),
        (lambda g: F.clip_grad_value_(g, 0.1), f32 + [noncontig], ValueError, "C-contiguous"),
        (lambda g: F.accumulate_(g[0], g[1]), f32, ValueError, "shape"),
        (lambda g: F.accumulate_(g[0], g[0][::-1].copy().astype(np.float64)), f32, TypeError, "dtype"),
        (lambda g: F.accumulate_(g[0], g[0]), f32, ValueError, "share memory"),
        (lambda g: F.accumulate_(g, g[:1]), f32, ValueError, "accumulators"),
    ]


@pytest.mark.parametrize("case", range(19))
def test_bad_inputs_raise_and_change_nothing(backend, case):
    fn, grads, exc, match = _bad_calls(np.random.default_rng(case))[case]
    before = [g.copy() for g in grads]
    with pytest.raises(exc, match=match):
        fn(grads)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)


@pytest.mark.parametrize("norm_type", [0.5, 1e-3])
def test_norm_whose_root_overflows_is_inf(backend, norm_type):
    # sum |g|^p is finite, its 1/p power is not: inf (torch's answer), not an OverflowError.
    grads = [np.full(3, 1e308)]
    assert F.global_norm(grads, norm_type) == math.inf
    assert F.clip_grad_norm_(grads, 1.0, norm_type) == math.inf
    assert np.array_equal(grads[0], np.zeros(3))      # coefficient 1 / inf


def test_global_norm_accepts_read_only_and_inf_string(rng):
    g = rng.standard_normal(100)
    g.flags.writeable = False
    assert F.global_norm([g], "inf") == np.abs(g).max()
    assert F.global_norm(g) == pytest.approx(np.linalg.norm(g), rel=1e-14)


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_has_the_kernels(name):
    require_backend(name)
    for k in ("norm_partial", "scale", "clamp", "accumulate"):
        assert callable(kernel(k, name))


def _emulated_norm_partial(x, y, use_y, norm_type):
    """The documented summation order (kernels/CONTRACT.md) in NumPy: blocks of 4096, 16 float64
    lanes per block (lane j sums the elements i % 16 == j in order), the fixed lane tree, block
    sums added in block order. Zero padding of the last block adds +0.0 to a lane: no change."""
    v = (x + y) if use_y else x
    a = np.abs(v.astype(np.float64))
    a = a * a if norm_type == 2.0 else a
    nb = -(-a.size // 4096)
    blocks = np.zeros(nb * 4096)
    blocks[:a.size] = a
    blocks = blocks.reshape(nb, 256, 16)
    lanes = np.zeros((nb, 16))
    for k in range(256):
        lanes += blocks[:, k, :]
    s = lanes[:, :8] + lanes[:, 8:]
    s = s[:, :4] + s[:, 4:]
    sums = (s[:, 0] + s[:, 2]) + (s[:, 1] + s[:, 3])
    total = 0.0
    for b in sums:
        total += float(b)
    return total


@pytest.mark.parametrize("norm_type", [2.0, 1.0], ids=str)
@pytest.mark.parametrize("n", [7, 4096, 4097, 100_003, 4096 * 37 + 5, 4096 * 64, 500_003])
def test_float32_norm_is_bitwise_the_documented_order(backend, rng, norm_type, n):
    """Not just deterministic: exactly the documented order, at 1 and 2 threads (a kernel may
    walk its blocks in any interleaving, but each block and the block order must be as specified)."""
    x, y = _grads(rng, [(n,), (n,)], np.float32)

    def run(threads):
        for use_y in (False, True):
            got = kernel("norm_partial", backend)(x, y, use_y, norm_type)
            assert got.hex() == _emulated_norm_partial(x, y, use_y, norm_type).hex(), (threads, use_y)

    run_at_thread_counts(run, (1, 2))
