"""Bad input: a clear TypeError/ValueError naming the argument, and every array unchanged."""
import numpy as np
import pytest

import fastgd
from fastgd import functional as F


def _arrays(rng, n=33, dtype=np.float32):
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v, vmax = (np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(2))
    return dict(param=p, grad=g, exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=vmax)


def _call(arrays, **kw):
    a = dict(arrays)
    vmax = a.pop("max_exp_avg_sq")
    kw.setdefault("step", 3)
    kw.setdefault("max_exp_avg_sq", vmax)
    F.adam_(a["param"], a["grad"], a["exp_avg"], a["exp_avg_sq"], **kw)


def _expect_error(rng, exc, match, mutate=None, **kw):
    arrays = _arrays(rng)
    if mutate:
        mutate(arrays)
    before = {k: np.array(v, copy=True) for k, v in arrays.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=match):
        _call(arrays, **kw)
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(arrays[k]), v, err_msg=f"{k} was modified")


HYPER_CASES = [
    (ValueError, "lr", dict(lr=-1e-3)),
    (ValueError, "eps", dict(eps=0.0)),
    (ValueError, "eps", dict(eps=-1.0)),
    (ValueError, r"betas\[0\]", dict(betas=(1.0, 0.999))),
    (ValueError, r"betas\[1\]", dict(betas=(0.9, -0.1))),
    (TypeError, "betas", dict(betas=0.9)),
    (ValueError, "step", dict(step=0)),
    (TypeError, "step", dict(step=1.5)),
    (ValueError, "weight_decay", dict(weight_decay=-0.1)),
    (ValueError, "lr", dict(lr=float("nan"))),
    (ValueError, "grad_scale", dict(grad_scale=float("inf"))),
    (TypeError, "amsgrad", dict(amsgrad="yes")),
    (ValueError, "max_exp_avg_sq", dict(amsgrad=True, max_exp_avg_sq=None)),
]


@pytest.mark.parametrize("exc,match,kw", HYPER_CASES, ids=[str(c[2]) for c in HYPER_CASES])
def test_bad_hyperparameters(backend, rng, exc, match, kw):
    _expect_error(rng, exc, match, **kw)


def _noncontig(a):
    a["exp_avg"] = np.repeat(a["exp_avg"], 2)[::2]


def _readonly(a):
    a["param"].flags.writeable = False


ARRAY_CASES = [
    (TypeError, "grad", lambda a: a.update(grad=list(a["grad"]))),
    (TypeError, "param", lambda a: a.update(param=np.arange(33))),
    (TypeError, "exp_avg", lambda a: a.update(exp_avg=a["exp_avg"].astype(np.float64))),
    (ValueError, "exp_avg_sq", lambda a: a.update(exp_avg_sq=a["exp_avg_sq"][:-1].copy())),
    (ValueError, "C-contiguous", _noncontig),
    (ValueError, "read-only", _readonly),
    (ValueError, "share memory", lambda a: a.update(exp_avg=a["param"])),
    (ValueError, "share memory", lambda a: a.update(exp_avg_sq=a["grad"])),
    (TypeError, "float32 or float64", lambda a: [a.update({k: v.astype(np.float16)}) for k, v in list(a.items())]),
    (TypeError, "native byte order", lambda a: a.update(param=a["param"].astype(">f4"))),
]


@pytest.mark.parametrize("exc,match,mutate", ARRAY_CASES, ids=[c[1] + str(i) for i, c in enumerate(ARRAY_CASES)])
def test_bad_arrays(backend, rng, exc, match, mutate):
    _expect_error(rng, exc, match, mutate=mutate, amsgrad=True)


def test_grad_may_be_read_only(backend, rng):
    """A read-only gradient is accepted, left unchanged, and gives the step a writable one gives."""
    a = _arrays(rng)
    b = {k: v.copy() for k, v in a.items()}     # the same step with a writable gradient
    param0, grad0 = a["param"].copy(), a["grad"].copy()
    a["grad"].flags.writeable = False
    _call(a)
    _call(b)
    assert np.any(a["param"] != param0)          # the step was taken
    np.testing.assert_array_equal(a["grad"], grad0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- optimizers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(lr=-1.0), "lr"), (dict(eps=0.0), "eps"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(amsgrad=1), "amsgrad"),
])
def test_optimizer_rejects_bad_options(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastgd.Adam([np.ones(3, np.float32)], **kw)


def test_optimizer_rejects_bad_params():
    with pytest.raises(ValueError, match="empty"):
        fastgd.Adam([])
    with pytest.raises(TypeError, match="not one array"):
        fastgd.Adam(np.ones(3))
    with pytest.raises(TypeError, match="params\\[0\\]"):
        fastgd.Adam([[1.0, 2.0]])
    p = np.ones(3)
    with pytest.raises(ValueError, match="more than one parameter group"):
        fastgd.Adam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="unknown option"):
        fastgd.Adam([{"params": [p], "momentum": 0.9}])


def test_step_validates_every_grad_before_any_write(backend, rng):
    params = [rng.standard_normal(5), rng.standard_normal(6)]
    opt = fastgd.Adam(params, lr=0.1)
    opt.step([rng.standard_normal(5), rng.standard_normal(6)])
    before = [p.copy() for p in params]
    state_before = {i: {k: np.copy(v) for k, v in s.items()} for i, s in opt.state.items()}
    for bad, match in [([rng.standard_normal(5), rng.standard_normal(7)], "grads\\[1\\]"),
                       ([rng.standard_normal(5)], "2 parameters"),
                       ([rng.standard_normal(5), rng.standard_normal(6).astype(np.float32)], "dtype"),
                       ([rng.standard_normal(5), params[1]], "shares memory")]:
        with pytest.raises((ValueError, TypeError), match=match):
            opt.step(bad)
        for p, b in zip(params, before):
            np.testing.assert_array_equal(p, b)
        for i, s in opt.state.items():
            for k, v in s.items():
                np.testing.assert_array_equal(v, state_before[i][k])


def test_bad_lr_set_by_user_is_refused_at_step(rng):
    params = [rng.standard_normal(5)]
    opt = fastgd.Adam(params)
    opt.param_groups[0]["lr"] = -1.0
    before = params[0].copy()
    with pytest.raises(ValueError, match="lr"):
        opt.step([rng.standard_normal(5)])
    np.testing.assert_array_equal(params[0], before)


def test_none_grad_skips_parameter(backend, rng):
    params = [rng.standard_normal(5), rng.standard_normal(6)]
    before = params[1].copy()
    opt = fastgd.Adam(params, lr=0.1)
    opt.step([rng.standard_normal(5), None])
    np.testing.assert_array_equal(params[1], before)
    assert 1 not in opt.state and opt.state[0]["step"] == 1


@pytest.mark.parametrize("form", ["cython", "numpy"])
def test_disjoint_matches_brute_force(form):
    """The table's gradient check (fastgd._validate.disjoint): addresses back exactly when no
    non-empty gradient span meets a table span, on random layouts with touching ends."""
    from fastgd import _validate as check
    if form == "cython":
        from fastgd._cython.arrays import disjoint
    else:
        disjoint = check._python_disjoint
    rng = np.random.default_rng(7)
    for _ in range(3000):
        k = int(rng.integers(0, 8))
        ends = np.sort(rng.choice(200, size=2 * k, replace=False)).astype(np.int64)
        lo, hi = ends[0::2].copy(), ends[1::2].copy()
        n = int(rng.integers(0, 6))
        addresses = [int(a) for a in rng.integers(0, 210, n)]
        nbytes = rng.integers(0, 15, n).astype(np.int64)
        overlap = any(nbytes[i] and lo[j] < addresses[i] + nbytes[i] and addresses[i] < hi[j]
                      for i in range(n) for j in range(k))
        got = disjoint(addresses, nbytes, lo, hi)
        if overlap:
            assert got is None
        else:
            assert got.dtype == np.int64 and got.tolist() == addresses


def test_disjoint_refuses_mismatched_lengths():
    from fastgd._cython.arrays import disjoint
    spans = np.array([0], np.int64)
    with pytest.raises(ValueError, match="one size per address"):
        disjoint([1, 2], np.array([4], np.int64), spans, spans)
