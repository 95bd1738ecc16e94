"""Option grids driven by the specs: every option of every rule, on every front end and backend.

A rule's options come from its spec (fastgd/rules/<rule>.py), so the grid below is too: each
option at a non-default value alone, then all of them together (where the rule's cross-check
allows). ``ALTERNATIVE`` must name a value for every option of every spec, so a new option
cannot land untested.
"""
import itertools

import numpy as np
import pytest

import fastgd
from fastgd.rules import SPECS
from _helpers import COMPILED, require_backend

#: a valid non-default value of each option (of any rule)
ALTERNATIVE = {
    "lr": 0.03, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05, "amsgrad": True,
    "maximize": True, "decoupled_weight_decay": True, "momentum": 0.5, "dampening": 0.1,
    "nesterov": True, "lr_decay": 0.01, "initial_accumulator_value": 0.2, "alpha": 0.9,
    "centered": True, "momentum_decay": 0.01,
}

#: the fastgd.optim class of each spec (AdamW is Adam's spec with a fixed option)
CLASS = {"adam": "Adam", "sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop",
         "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam", "lion": "Lion"}


def _grid(spec):
    """Option dicts: each option alone at its alternative, then all together, each checked by
    the spec (a combination the rule refuses, like nesterov with dampening, is left out)."""
    names = [n for n, _ in spec.options]
    cases = [{}] + [{n: ALTERNATIVE[n]} for n in names] + [{n: ALTERNATIVE[n] for n in names}]
    if spec.name == "sgd":   # nesterov needs momentum and no dampening
        cases.append({"momentum": 0.5, "nesterov": True, "weight_decay": 0.05, "maximize": True})
    out = []
    for options in cases:
        try:
            spec.check_options({**spec.defaults, **options})
        except ValueError:
            continue
        out.append(options)
    return out


def _ids(spec):
    return ["-".join(f"{k}" for k in c) or "defaults" for c in _grid(spec)]


def test_every_option_of_every_spec_has_a_test_value():
    missing = {n for spec in SPECS.values() for n, _ in spec.options} - set(ALTERNATIVE)
    assert not missing, f"give these options a value in ALTERNATIVE: {sorted(missing)}"
    for spec in SPECS.values():   # each alternative is valid for the rule and not its default
        for n, d in spec.options:
            assert spec.check_option(n, ALTERNATIVE[n]) != spec.check_option(n, d), (spec.name, n)


CASES = [(name, options) for name, spec in SPECS.items() for options in _grid(spec)]


def _run(name, options, backend, dtype, steps=12, n=1001, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype), rng.standard_normal((7, 3)).astype(dtype)]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(steps)]
    with fastgd.use_backend(backend):
        opt = getattr(fastgd, CLASS[name])(params, **options)
        for g in grads:
            opt.step(g)
    return params, opt.state


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{'-'.join(o) or 'defaults'}" for n, o in CASES])
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_optimizer_matches_the_reference_for_every_option(name, options, backend, dtype):
    require_backend(backend)
    got, got_state = _run(name, options, backend, dtype)
    want, want_state = _run(name, options, "numpy", dtype)
    rtol, atol = (2e-4, 1e-5) if dtype == np.float32 else (1e-10, 1e-12)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name} {options} {backend}")
    for i in want_state:
        assert set(got_state[i]) == set(want_state[i])
        for k, v in want_state[i].items():
            np.testing.assert_allclose(got_state[i][k], v, rtol=rtol, atol=atol, err_msg=f"{name} {k}")


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{'-'.join(o) or 'defaults'}" for n, o in CASES])
def test_functional_form_matches_the_optimizer_for_every_option(name, options, rng):
    """fastgd.functional's rule (made from the same spec) steps as the optimizer does."""
    spec = SPECS[name]
    o = spec.check_options({**spec.defaults, **options})
    p = rng.standard_normal(513)
    p_opt = p.copy()
    opt = getattr(fastgd, CLASS[name])([p_opt], **options)
    fn = getattr(fastgd.functional, name + "_")
    state = {st.argument: np.full(p.size, st.initial(o)) for st in spec.state if st.needed(o)}
    scalars = {n: v for n, v, _ in spec.scalar_state}
    for t in range(1, 9):
        g = rng.standard_normal(513)
        opt.step([g])
        kw = dict(options, **state, **scalars)
        if spec.scalars is not None:
            kw["step"] = t
        out = fn(p, g, **kw)
        if scalars:
            scalars = {next(iter(scalars)): out}
    np.testing.assert_array_equal(p, p_opt)


torch = pytest.importorskip("torch")
import fastgd.torch as ft  # noqa: E402

TORCH_CASES = [(n, o) for n, o in CASES if n != "lion"]


@pytest.mark.parametrize("name, options", TORCH_CASES,
                         ids=[f"{n}-{'-'.join(o) or 'defaults'}" for n, o in TORCH_CASES])
@pytest.mark.parametrize("flatten", [False, True], ids=["", "flatten"])
def test_torch_front_end_matches_torch_optim_for_every_option(name, options, flatten):
    """float64, 30 steps, to 1e-10 relative: the drop-in follows torch.optim option by option."""
    cls = CLASS[name]
    torch.manual_seed(0)
    base = [torch.randn(33, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    mine = [torch.nn.Parameter(b.clone()) for b in base]
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    om = getattr(ft, cls)(mine, **options, flatten=flatten)
    ot = getattr(torch.optim, cls)(theirs, **options)
    for _ in range(30):
        gs = [torch.randn_like(b) for b in base]
        for ps, o in ((mine, om), (theirs, ot)):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            o.step()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_grid_is_not_trivial():
    assert len(CASES) >= 60
    for name, spec in SPECS.items():   # every option is exercised somewhere for every rule
        seen = set(itertools.chain.from_iterable(o for n, o in CASES if n == name))
        assert seen == {n for n, _ in spec.options}, name
