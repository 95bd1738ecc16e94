"""Clipping fused into the optimizer step: the base-class options every optimizer takes."""
import inspect
import math
import pickle

import numpy as np
import pytest

import fastgd
import fastgd.rules
from fastgd import functional as F

from _helpers import DTYPES, run_at_thread_counts

CASES = [(fastgd.Adam, {}), (fastgd.Adam, dict(amsgrad=True, weight_decay=0.1)),
         (fastgd.AdamW, dict(maximize=True))]


def _setup(rng, dtype, shapes=((17,), (4, 5), (1000,))):
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(p.shape) * 3).astype(dtype) for p in params] for _ in range(6)]
    return params, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("cls,kw", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_fused_clip_equals_clip_then_step(backend, rng, dtype, norm_type, cls, kw):
    # One array large enough for the parallel kernels only where it matters (the norm pass).
    shapes = ((17,), (4, 5), (40_000,) if norm_type == 2.0 else (1000,))
    params, grads = _setup(rng, dtype, shapes)
    fused_params = [p.copy() for p in params]
    fused = cls(fused_params, lr=1e-2, max_grad_norm=1.5, norm_type=norm_type, **kw)
    plain = cls(params, lr=1e-2, **kw)
    for gs in grads:
        unclipped = [g.copy() for g in gs]
        fused.step(gs)
        for g, u in zip(gs, unclipped):
            np.testing.assert_array_equal(g, u)  # the fused step does not rewrite grads
        total = F.clip_grad_norm_(gs, 1.5, norm_type)
        assert fused.last_grad_norm == total
        plain.step(gs)
        # The same coefficient reaches the kernel as a grad_scale: g * coef rounds identically,
        # unless the compiler fuses g * coef + wd * p into one multiply-add (coupled decay).
        for a, b in zip(fused_params, params):
            if kw.get("weight_decay"):
                tol = 1e-6 if dtype == np.float32 else 1e-14
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
            else:
                np.testing.assert_array_equal(a, b)
    assert fused.skipped_steps == 0


def test_no_clipping_below_max_norm_is_the_plain_step(backend, rng):
    params, grads = _setup(rng, np.float32)
    other = [p.copy() for p in params]
    a = fastgd.Adam(params, max_grad_norm=1e6)
    b = fastgd.Adam(other)
    for gs in grads:
        a.step(gs)
        b.step(gs)
        assert a.last_grad_norm == F.global_norm(gs)
    for x, y in zip(params, other):
        np.testing.assert_array_equal(x, y)


def test_clip_with_grad_scale_clips_the_scaled_gradient(backend, rng):
    params, grads = _setup(rng, np.float64)
    other = [p.copy() for p in params]
    a = fastgd.Adam(params, lr=0.1, max_grad_norm=0.5)
    b = fastgd.Adam(other, lr=0.1)
    for gs in grads:
        a.step(gs, grad_scale=0.25)   # e.g. unscaling a loss scale of 4
        scaled = [0.25 * g for g in gs]
        total = F.clip_grad_norm_(scaled, 0.5)
        assert a.last_grad_norm == pytest.approx(total, rel=1e-14)
        b.step(scaled)
    for x, y in zip(params, other):
        np.testing.assert_allclose(x, y, rtol=1e-13)


def _snapshot(opt, params):
    return pickle.dumps((opt.state_dict(), [p.copy() for p in params]))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_norm_skips_the_step_and_changes_nothing(backend, rng, bad):
    params, grads = _setup(rng, np.float32)
    opt = fastgd.Adam(params, lr=0.1, max_grad_norm=1.0, amsgrad=True)
    # Also on the very first step: no state is created.
    grads[0][2][123] = bad
    opt.step(grads[0])
    assert opt.state == {} and opt.skipped_steps == 1
    opt.step(grads[1])
    before = _snapshot(opt, params)
    grads[2][0][3] = bad
    opt.step(grads[2])
    assert not math.isfinite(opt.last_grad_norm)
    assert opt.skipped_steps == 2
    assert _snapshot(opt, params) == before
    opt.step(grads[3])
    assert opt.state[0]["step"] == 2 and math.isfinite(opt.last_grad_norm)
    # error_if_nonfinite raises instead, before any write, and does not count a skip.
    opt.error_if_nonfinite = True
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step(grads[2])
    assert _snapshot(opt, params) == before and opt.skipped_steps == 2


def test_without_max_grad_norm_nonfinite_grads_are_not_checked(backend, rng):
    params, grads = _setup(rng, np.float32)
    opt = fastgd.Adam(params)
    grads[0][0][0] = np.nan
    opt.step(grads[0])
    assert np.isnan(params[0][0]) and opt.skipped_steps == 0 and opt.last_grad_norm is None


def test_base_options_on_every_subclass_signature():
    for cls in (fastgd.Adam, fastgd.AdamW):
        sig = inspect.signature(cls)
        for name, default in fastgd.optim.CLIPPING_OPTIONS.items():
            assert sig.parameters[name].default == default
            assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    opt = fastgd.AdamW([np.zeros(3)], max_grad_norm=2, norm_type="inf", error_if_nonfinite=True)
    assert (opt.max_grad_norm, opt.norm_type, opt.error_if_nonfinite) == (2.0, math.inf, True)
    # Not param-group options, not in state_dict.
    assert "max_grad_norm" not in opt.param_groups[0]
    assert set(opt.state_dict()) == {"state", "param_groups"}


@pytest.mark.parametrize("kw,exc,match", [
    (dict(max_grad_norm=0.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=math.nan), ValueError, "max_grad_norm"),
    (dict(max_grad_norm="1"), TypeError, "max_grad_norm"),
    (dict(norm_type=0), ValueError, "norm_type"),
    (dict(norm_type=-math.inf), ValueError, "norm_type"),
    (dict(error_if_nonfinite=None), TypeError, "error_if_nonfinite"),
])
def test_bad_base_options(kw, exc, match):
    with pytest.raises(exc, match=match):
        fastgd.Adam([np.zeros(3)], **kw)
    opt = fastgd.Adam([np.zeros(3)])
    name, value = next(iter(kw.items()))
    with pytest.raises(exc, match=match):
        setattr(opt, name, value)


class _PlainSGD(fastgd.Optimizer):
    """What a new optimizer looks like: a rule's spec (and a default of its own); the base gives
    it the clipping options without the spec listing them."""
    spec = fastgd.rules.SPECS["sgd"]
    overrides = {"lr": 0.1}


def test_a_subclass_gets_clipping_without_listing_it(rng):
    p = rng.standard_normal(10)
    g = rng.standard_normal(10) * 10
    expected = p - 0.1 * g * (1.0 / (np.linalg.norm(g) + 1e-6))
    opt = _PlainSGD([p], max_grad_norm=1.0)
    opt.step([g])
    np.testing.assert_allclose(p, expected, rtol=1e-14)
    assert opt.last_grad_norm == pytest.approx(np.linalg.norm(g))
    with pytest.raises(TypeError):
        _PlainSGD([p], shrink=0.9)


def test_clip_rule_makes_a_clipping_optimizer():
    from fastgd.rules import RULES
    rule = RULES["clip_adam"]
    opt = rule.make([np.zeros(3, np.float32)])
    assert opt.max_grad_norm == rule.options["max_grad_norm"] and rule.bytes_per_element == 32


def test_a_subclass_may_not_redeclare_a_base_option():
    import dataclasses
    bad = dataclasses.replace(fastgd.rules.SPECS["sgd"],
                              options=fastgd.rules.SPECS["sgd"].options + (("max_grad_norm", None),))
    with pytest.raises(TypeError, match="must not declare max_grad_norm"):
        class _Bad(fastgd.Optimizer):
            spec = bad


def test_clipped_steps_are_bitwise_identical_at_1_and_2_threads(backend, rng):
    params, grads = _setup(rng, np.float32, shapes=((70_001,), (33,)))

    def run(threads):
        ps = [p.copy() for p in params]
        multi = fastgd.MultiSteps(fastgd.AdamW(ps, lr=1e-2, max_grad_norm=1.0), 2)
        norms = []
        for gs in grads:
            multi.step(gs)
            norms.append(multi.optimizer.last_grad_norm)
        return ps, norms

    (a, na), (b, nb) = run_at_thread_counts(run, (1, 2))
    assert na == nb
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
