"""The optimizer family (SGD, Adagrad, RMSprop, Adamax, NAdam, RAdam, Lion): every compiled backend
against the NumPy reference, fused accumulation, thread-count independence and checkpoints.

Torch trajectories are in test_family_torch.py; bad input in test_family_validation.py.
"""
import itertools

import numpy as np
import pytest

import fastgd
from fastgd import functional as F
from fastgd.backends import kernel

from _helpers import (DTYPES, assert_close, peak_bytes_of_steps, random_arrays, resume_from_state_dict,
                      run_at_thread_counts)

SMALL = (1, 7, 1023)
LARGE = 100_003
MX_GS = ((False, 1.0), (True, 0.37))  # maximize and grad_scale vary together (both are read_grad)


def _opts(**axes):
    """Every combination of the given option values, as dicts (maximize/grad_scale paired)."""
    names = list(axes) + ["mx_gs"]
    out = []
    for values in itertools.product(*axes.values(), MX_GS):
        o = dict(zip(names, values))
        o["maximize"], o["grad_scale"] = o.pop("mx_gs")
        out.append(o)
    return out


# rule -> (state names, indices of states that must be > 0, hyperparameters, option combinations)
SPECS = {
    "sgd": (("momentum_buffer",), (), dict(lr=1e-2),
            [o for o in _opts(momentum=(0.0, 0.9), dampening=(0.0, 0.3), nesterov=(False, True),
                              weight_decay=(0.0, 0.05))
             if not (o["nesterov"] and (o["momentum"] == 0 or o["dampening"] != 0))
             and not (o["momentum"] == 0 and o["dampening"] != 0)]),
    "adagrad": (("state_sum",), (0,), dict(lr=5e-2),
                _opts(lr_decay=(0.0, 0.01), weight_decay=(0.0, 0.05))),
    "rmsprop": (("square_avg", "momentum_buffer", "grad_avg"), (0,), dict(lr=1e-3, alpha=0.9),
                _opts(weight_decay=(0.0, 0.05), momentum=(0.0, 0.9), centered=(False, True))),
    "adamax": (("exp_avg", "exp_inf"), (1,), dict(lr=1e-2, betas=(0.8, 0.95)),
               _opts(weight_decay=(0.0, 0.05))),
    "nadam": (("exp_avg", "exp_avg_sq"), (1,), dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6),
              [dict(o, weight_decay=wd, decoupled_weight_decay=dec)
               for o in _opts(momentum_decay=(4e-3, 0.1))
               for wd, dec in ((0.0, False), (0.05, False), (0.05, True))]),
    "radam": (("exp_avg", "exp_avg_sq"), (1,), dict(lr=1e-2, eps=1e-6),
              # beta2=0.999: rho_t > 5 from step 6 (both branches); beta2=0.5: never rectified
              [dict(o, weight_decay=wd, decoupled_weight_decay=dec)
               for o in _opts(betas=((0.9, 0.999), (0.8, 0.5)))
               for wd, dec in ((0.0, False), (0.05, False), (0.05, True))]),
    "lion": (("exp_avg",), (), dict(lr=1e-3),
             _opts(betas=((0.9, 0.99), (0.5, 0.9)), weight_decay=(0.0, 0.5))),
}


def _functional_step(rule, p, g, states, t, kw, carry):
    """One step of ``rule``'s functional form; ``carry`` holds NAdam's mu_product."""
    if rule == "sgd":
        F.sgd_(p, g, states[0], step=t, **kw)
    elif rule == "adagrad":
        F.adagrad_(p, g, states[0], step=t, **kw)
    elif rule == "rmsprop":
        F.rmsprop_(p, g, states[0], momentum_buffer=states[1], grad_avg=states[2], **kw)
    elif rule == "adamax":
        F.adamax_(p, g, *states, step=t, **kw)
    elif rule == "nadam":
        carry[0] = F.nadam_(p, g, *states, step=t, mu_product=carry[0], **kw)
    elif rule == "radam":
        F.radam_(p, g, *states, step=t, **kw)
    elif rule == "lion":
        F.lion_(p, g, *states, **kw)


def _initial(rule, rng, n, dtype):
    names, positive, _, _ = SPECS[rule]
    p, *states = random_arrays(rng, n, dtype, 1 + len(names), positive=tuple(i + 1 for i in positive))
    if rule == "rmsprop":
        # centered: square_avg - grad_avg^2 (a variance) > 0, as in a real run, and not so small
        # that sqrt(square_avg - grad_avg^2) loses most float32 digits to cancellation.
        states[2] *= 0.3
        states[0] += states[2] * states[2]
    else:
        for s in states:
            s *= 0.5
    return p, states


def _run(rule, backend, n, dtype, opts, steps, seed):
    """(state arrays after ``steps`` steps, NAdam's mu_product, Lion's sign-unsure mask or None)."""
    rng = np.random.default_rng(seed)
    p, states = _initial(rule, rng, n, dtype)
    grads = random_arrays(rng, n, dtype, steps)
    kw = {**SPECS[rule][2], **opts}
    carry = [1.0]
    unsure = np.zeros(n, dtype=bool) if rule == "lion" else None
    gs = -kw["grad_scale"] if kw["maximize"] else kw["grad_scale"]
    with fastgd.use_backend(backend):
        for t, g in enumerate(grads, start=1):
            if rule == "lion":
                unsure |= _lion_sign_unsure(states[0], g.astype(np.float64) * gs, kw["betas"][0], dtype)
            _functional_step(rule, p, g, states, t, kw, carry)
    return [p] + states, carry[0], unsure


_REFERENCE = {}


def _reference(rule, n, dtype, opts, steps, seed):
    """_run on the reference, computed once for all backends (the caller only reads it)."""
    key = (rule, n, dtype, repr(opts), steps, seed)
    if key not in _REFERENCE:
        _REFERENCE[key] = _run(rule, "numpy", n, dtype, opts, steps, seed)
    return _REFERENCE[key]


# Lion's update is lr * sign(c), c = b1 * m + (1 - b1) * g: a backend may get the other sign only
# where c is within rounding of 0 (a fused multiply-add rounds once instead of twice, and its m is
# a few ulps off the reference's after earlier steps). LION_ULPS bounds "within rounding": ulps of
# the dtype at the terms' magnitude |b1 * m| + |(1 - b1) * g|.
LION_ULPS = 16


def _lion_sign_unsure(m, g, beta1, dtype):
    """Where sign(c) of this step is not settled by the dtype's arithmetic: |c|, computed in
    float64 from the step's inputs (m before the step, g the effective gradient), is within
    LION_ULPS ulps of zero."""
    m = m.astype(np.float64)
    c = beta1 * m + (1.0 - beta1) * g
    scale = np.abs(beta1 * m) + np.abs((1.0 - beta1) * g)
    return np.abs(c) <= LION_ULPS * np.finfo(dtype).eps * scale


def _lion_max_unsure(size):
    """An explicit bound on the exempted elements: 1 for the short arrays (n <= 1023, 50 steps),
    6 at n = 100,003 (4 steps). With this test's random data none is near enough to 0 (measured:
    0 in every case, float32 and float64; 2 in 400,000 element-steps at 64 ulps)."""
    return 1 + size // 20_000


def _compare(rule, actual, expected, dtype, what, unsure=None):
    names = ("param",) + SPECS[rule][0]
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == dtype
        if rule == "lion" and name == "param":
            # Exempt only the elements whose sign(c) was within rounding of 0 at some step (that
            # element then moves by 2 * lr more); every other element must match, and m (which
            # does not depend on p) everywhere.
            assert unsure is not None and unsure.shape == a.shape
            assert np.count_nonzero(unsure) <= _lion_max_unsure(a.size), f"{what}: {np.count_nonzero(unsure)} unsure"
            assert_close(a[~unsure], e[~unsure], dtype, f"{name} of {what} (outside {np.count_nonzero(unsure)} unsure)")
            continue
        assert_close(a, e, dtype, f"{name} of {what}")


def _mu_product(kw, steps):
    """NAdam's mu_1 * ... * mu_steps from torch.optim.NAdam's definition, written out here:
    mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    return float(np.prod(kw["betas"][0] * (1.0 - 0.5 * np.power(0.96, t * kw["momentum_decay"]))))


def _ids(o):
    return ",".join(f"{k}={v}" for k, v in o.items())


CASES = [(rule, o) for rule, spec in SPECS.items() for o in spec[3]]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("rule,opts", CASES, ids=[f"{r}-{_ids(o)}" for r, o in CASES])
def test_matches_reference(backend, rule, opts, dtype):
    """50 steps from random state and gradients, lengths 1, 7 and 1023."""
    for n in SMALL:
        expected, _, unsure = _reference(rule, n, dtype, opts, 50, n)
        actual, mu_product, _ = _run(rule, backend, n, dtype, opts, 50, n)
        _compare(rule, actual, expected, dtype, f"{rule} {opts} on {backend}, {dtype.__name__}, n={n}",
                 unsure)
        if rule == "nadam":
            # abs=0: pytest.approx's default abs of 1e-12 would accept any product near 1e-20
            expected_mu = _mu_product({**SPECS[rule][2], **opts}, 50)
            assert mu_product == pytest.approx(expected_mu, rel=1e-13, abs=0)


# The fullest variant of each rule in both dtypes, the simplest in float32 (time: on a busy machine
# every parallel call can wait a scheduler slice for its second thread).
LARGE_CASES = [(rule, spec[3][i], dtype) for rule, spec in SPECS.items()
               for i, dtype in ((-1, np.float32), (-1, np.float64), (0, np.float32))]


@pytest.mark.parametrize("rule,opts,dtype", LARGE_CASES,
                         ids=[f"{r}-{_ids(o)}-{d.__name__}" for r, o, d in LARGE_CASES])
def test_matches_reference_parallel_length(backend, rule, opts, dtype):
    """n = 100_003: the parallel path with a ragged last piece."""
    expected, _, unsure = _reference(rule, LARGE, dtype, opts, 4, 3)
    actual, _, _ = _run(rule, backend, LARGE, dtype, opts, 4, 3)
    _compare(rule, actual, expected, dtype, f"{rule} {opts} on {backend}, {dtype.__name__}, n={LARGE}",
             unsure)


@pytest.mark.parametrize("rule", SPECS)
def test_parameters_move(backend, rule, rng):
    """Guards the comparisons from passing vacuously (e.g. both sides doing nothing)."""
    p, states = _initial(rule, rng, 1023, np.float64)
    before = p.copy()
    kw = {**SPECS[rule][2], "lr": 0.1}
    _functional_step(rule, p, rng.standard_normal(1023), states, 2, kw, [1.0])
    assert np.all(p != before)


# --- fused gradient accumulation at kernel level -------------------------------------------------

# rule -> rule scalars after (grad_scale, maximize, use_acc), exercising the fullest variant
KERNEL_SCALARS = {
    "sgd": (1e-2, 0.9, 0.1, 0.01, False, False),
    "adagrad": (1e-2, 0.01, 1e-10),
    "rmsprop": (1e-2, 0.9, 1e-8, 0.01, 0.9, True),
    "adamax": (1e-2, 0.9, 0.99, 1e-8, 0.01, 0.3),
    "nadam": (1e-2, 0.9, 0.99, 1e-8, 0.01, True, 0.01, 0.05, 0.2),
    "radam": (1e-2, 0.9, 0.99, 1e-8, 0.01, False, 0.3, 0.2, True, 0.7),
    "lion": (1e-2, 0.9, 0.99, 0.1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", (7, LARGE))
@pytest.mark.parametrize("rule", KERNEL_SCALARS)
def test_fused_accumulation_in_the_kernel(backend, rule, dtype, n, rng):
    """use_acc: the kernel steps with gs * (acc + grad) and zeroes acc in the same pass."""
    p, states = _initial(rule, rng, n, dtype)
    g, acc = random_arrays(rng, n, dtype, 2)
    ref = [a.copy() for a in [p, g, acc] + states]
    args = (0.5, True, True) + KERNEL_SCALARS[rule]
    unsure = None
    if rule == "lion":   # gs = -0.5 (maximize), beta1 = KERNEL_SCALARS["lion"][1]
        unsure = _lion_sign_unsure(states[0], -0.5 * (acc.astype(np.float64) + g), args[4], dtype)
    kernel(rule, backend)(p, g, acc, *states, *args)
    kernel(rule, "numpy")(*ref, *args)
    assert not np.any(acc) and not np.any(ref[2])
    _compare(rule, [p] + states, [ref[0]] + ref[3:], dtype, f"{rule} use_acc on {backend}", unsure)


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "lion"])
def test_unused_accumulator_is_untouched(backend, rule, rng):
    """use_acc=False: the kernel neither reads nor writes grad_acc (param is passed in its place)."""
    p, states = _initial(rule, rng, 100, np.float64)
    g, acc = random_arrays(rng, 100, np.float64, 2)
    saved = acc.copy()
    kernel(rule, backend)(p, g, acc, *states, 1.0, False, False, *KERNEL_SCALARS[rule])
    np.testing.assert_array_equal(acc, saved)


# --- optimizers: one variant set per class, used by the thread and checkpoint tests --------------

VARIANTS = [
    ("SGD", dict(lr=1e-2)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-3)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01)),
    ("Adamax", dict(weight_decay=0.01)),
    ("NAdam", dict(weight_decay=0.01)),
    ("NAdam", dict(weight_decay=0.01, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(weight_decay=0.01)),
    ("RAdam", dict(weight_decay=0.01, decoupled_weight_decay=True)),
    ("Lion", dict(weight_decay=0.1)),
]
VARIANT_IDS = [f"{c}-{_ids(o)}" for c, o in VARIANTS]


def _grads(rng, params, steps, dtype):
    return [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(steps)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls,kw", VARIANTS, ids=VARIANT_IDS)
def test_state_dict_resume_is_bit_identical(backend, rng, dtype, cls, kw):
    shapes = [(17,), (4, 5)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = _grads(rng, params, 20, dtype)
    opt, opt2 = resume_from_state_dict(
        lambda ps, **over: getattr(fastgd, cls)(ps, **{**kw, **over}), params, grads, 10)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for i, s in opt.state.items():
        assert set(s) == set(opt2.state[i])
        for k, v in s.items():
            np.testing.assert_array_equal(v, opt2.state[i][k], err_msg=k)


@pytest.mark.parametrize("cls,kw", VARIANTS, ids=VARIANT_IDS)
def test_results_do_not_depend_on_thread_count(backend, rng, cls, kw):
    n = 40_009  # above the parallel threshold (32768), odd so the last piece is ragged
    start = [rng.standard_normal(n).astype(np.float32)]
    grads = _grads(rng, start, 3, np.float32)

    def run(threads):
        params = [a.copy() for a in start]
        opt = getattr(fastgd, cls)(params, **kw)
        for g in grads:
            opt.step(g)
        return params[0]

    results = run_at_thread_counts(run, (1, 2))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("cls,kw", VARIANTS, ids=VARIANT_IDS)
def test_optimizer_equals_reference_optimizer(backend, rng, cls, kw):
    """The class on a compiled backend against the same class on the reference."""
    start = [rng.standard_normal(s) for s in [(33,), (2, 3)]]
    grads = _grads(rng, start, 30, np.float64)
    out = {}
    for b in ("numpy", backend):
        params = [a.copy() for a in start]
        opt = getattr(fastgd, cls)(params, **kw)
        with fastgd.use_backend(b):
            for g in grads:
                opt.step(g)
        out[b] = params
    for a, e in zip(out[backend], out["numpy"]):
        assert_close(a, e, np.float64)


def test_nadam_functional_carries_mu_product_like_the_class(backend, rng):
    p = rng.standard_normal(20)
    q = p.copy()
    m, v = np.zeros(20), np.zeros(20)
    opt = fastgd.NAdam([p], lr=1e-2)
    mu_product = 1.0
    for t in range(1, 8):
        g = rng.standard_normal(20)
        opt.step([g])
        mu_product = F.nadam_(q, g, m, v, step=t, mu_product=mu_product, lr=1e-2)
        assert opt.state[0]["mu_product"] == mu_product
    np.testing.assert_array_equal(p, q)


def test_sgd_buffer_starts_as_the_gradient(backend, rng):
    """torch's buf = clone(g) at the buffer's first step, also when momentum is switched on later."""
    p = rng.standard_normal(9)
    opt = fastgd.SGD([p], lr=0.1)
    opt.step([rng.standard_normal(9)])
    assert "momentum_buffer" not in opt.state[0]
    opt.param_groups[0]["momentum"] = 0.9
    opt.param_groups[0]["dampening"] = 0.5
    g = rng.standard_normal(9)
    opt.step([g])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], g)
    g2 = rng.standard_normal(9)
    opt.step([g2])
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], 0.9 * g + 0.5 * g2, rtol=1e-15)


def test_sgd_functional_overwrites_buffer_at_step_one(backend, rng):
    p, buf, g = rng.standard_normal((3, 11))
    F.sgd_(p, g, buf, step=1, lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_array_equal(buf, g)


@pytest.mark.parametrize("rule", list(SPECS))
def test_empty_arrays_are_a_no_op(backend, rule, rng):
    """Empty views into real buffers: a kernel that wrote at n = 0 would change a buffer."""
    buffers = [rng.standard_normal(8).astype(np.float32) for _ in range(2 + len(SPECS[rule][0]))]
    before = [b.copy() for b in buffers]
    p, g, *states = (b[3:3] for b in buffers)
    _functional_step(rule, p, g, states, 1, SPECS[rule][2], [1.0])
    for b, b0 in zip(buffers, before):
        np.testing.assert_array_equal(b, b0)


def test_registry_lists_the_family():
    from fastgd.rules import RULES
    expected = {"sgd": 12, "sgd_momentum": 20, "sgd_nesterov": 20, "adagrad": 20, "rmsprop": 20,
                "rmsprop_centered": 28, "adamax": 28, "nadam": 28, "radam": 28, "lion": 20}
    for name, nbytes in expected.items():
        rule = RULES[name]
        assert rule.bytes_per_element == nbytes
        # bytes = 4 * (grad read + each written array read and written)
        assert nbytes == 4 * (1 + 2 * rule.written), name
        params = [np.ones(3, np.float32)]
        rule.make(params).step([np.ones(3, np.float32)])
        if rule.torch:
            import inspect
            torch = pytest.importorskip("torch")
            cls = getattr(torch.optim, rule.torch)
            assert ("fused" in inspect.signature(cls).parameters) == rule.torch_fused, name


@pytest.mark.parametrize("rule", list(SPECS))
def test_nan_gradient_propagates_like_the_reference(backend, rule, rng):
    """A NaN gradient shows up in the parameter (a diverged run is visible), as in the reference:
    Adamax's max and Lion's sign are written so that they do not swallow it."""
    out = {}
    for b in ("numpy", backend):
        p, states = _initial(rule, np.random.default_rng(5), 9, np.float64)
        g = np.random.default_rng(6).standard_normal(9)
        g[3] = np.nan
        with fastgd.use_backend(b):
            _functional_step(rule, p, g, states, 2, SPECS[rule][2], [1.0])
        out[b] = p
    assert np.isnan(out[backend][3])
    np.testing.assert_array_equal(np.isnan(out[backend]), np.isnan(out["numpy"]))


@pytest.mark.parametrize("cls,kw", VARIANTS, ids=VARIANT_IDS)
def test_step_allocates_nothing_once_state_exists(backend, rng, cls, kw):
    n = 10_000
    params = [rng.standard_normal(n).astype(np.float32) for _ in range(2)]
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(2)]
    peak = peak_bytes_of_steps(getattr(fastgd, cls)(params, **kw), grads, 20)
    # one array of n float32 is 40,000 bytes; a few small Python objects per step come and go
    assert peak < 8192, f"{cls} step allocated {peak} bytes at peak"
