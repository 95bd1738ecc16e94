"""Regressions of the one-core issue: each defect the split into two optimizer frameworks caused
or hid, on both front ends where both have it. Each test failed on the code before the core."""
import copy
import math
import pickle
import threading

import numpy as np
import pytest

import fastgd
from fastgd.rules import SPECS

torch = pytest.importorskip("torch")
import fastgd.torch as ft  # noqa: E402


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)


def _backward(model, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(11, 7, dtype=next(model.parameters()).dtype)
    model.zero_grad()
    model(x).pow(2).sum().backward()


# --- one behaviour --------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, match", [
    ("Lion", dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    ("RMSprop", dict(alpha=1.5), "alpha"),
    ("SGD", dict(dampening=1.5), "dampening"),
    ("Adagrad", dict(eps=0.0), "eps"),
    ("RMSprop", dict(eps=0.0), "eps"),
])
def test_what_fastgd_optim_refuses_fastgd_torch_refuses_in_its_constructor(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(fastgd, cls)([np.ones(3)], **kwargs)
    with pytest.raises(ValueError, match=match):
        getattr(ft, cls)(_model().parameters(), **kwargs)


def test_eps_zero_message_says_torch_accepts_it_and_why():
    with pytest.raises(ValueError, match="torch.optim.Adagrad accepts it.*0 by 0"):
        ft.Adagrad(_model().parameters(), eps=0.0)


def test_torch_group_option_of_the_wrong_type_is_refused_at_step_and_nothing_changes():
    model = _model()
    opt = ft.SGD(model.parameters(), lr=0.1)
    _backward(model)
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["lr"] = "0.1"
    with pytest.raises(TypeError, match="lr must be a real number"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("front", ["numpy", "torch"])
def test_clipping_options_checked_on_assignment_in_both_front_ends(front):
    opt = fastgd.SGD([np.ones(3)]) if front == "numpy" else ft.SGD(_model().parameters())
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.max_grad_norm = -1
    with pytest.raises(ValueError, match="norm_type"):
        opt.norm_type = 0
    opt.max_grad_norm = math.inf             # measures without clipping, in both
    assert opt.max_grad_norm == math.inf


def test_tensor_lr_is_checked_as_torch_checks_it():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        ft.Adam(_model().parameters(), lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match="foreach=True"):
        ft.Adam(_model().parameters(), lr=torch.tensor(1e-3), foreach=True)
    with pytest.raises((ValueError, RuntimeError)):
        ft.Adam(_model().parameters(), betas=(torch.tensor([0.9, 0.9]), 0.999))
    # a 1-element tensor lr works, and a change made in place is seen at the next step
    model, ref = _model(), _model()
    lr = torch.tensor(0.1)
    opt, topt = ft.Adam(model.parameters(), lr=lr), torch.optim.Adam(ref.parameters(), lr=lr.clone())
    for step in range(3):
        for m, o in ((model, opt), (ref, topt)):
            _backward(m, step)
            o.step()
        lr.fill_(0.05)
        topt.param_groups[0]["lr"].fill_(0.05)
    # (torch computes a tensor lr's step size in float32: a rounding, not a stale lr)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-8)


def test_sgd_without_momentum_keeps_no_state_as_torch():
    model = _model()
    opt = ft.SGD(model.parameters(), lr=0.1)
    _backward(model)
    opt.step()
    assert opt.state_dict()["state"] == {} and len(opt.state) == 0


# --- checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dst", [("Adam", "AdamW"), ("AdamW", "Adam")])
@pytest.mark.parametrize("front", ["numpy", "torch"])
def test_another_rules_state_dict_is_refused_in_both_directions(src, dst, front):
    if front == "numpy":
        a, b = getattr(fastgd, src)([np.ones(4)]), getattr(fastgd, dst)([np.ones(4)])
        a.step([np.full(4, 0.5)])
    else:
        ma, mb = _model(), _model()
        a, b = getattr(ft, src)(ma.parameters()), getattr(ft, dst)(mb.parameters())
        _backward(ma)
        a.step()
    before = copy.deepcopy(b.state_dict())
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        b.load_state_dict(a.state_dict())
    assert b.param_groups[0]["decoupled_weight_decay"] == before["param_groups"][0]["decoupled_weight_decay"]
    assert len(b.state) == 0


def test_nadam_mu_product_out_of_range_is_refused_on_load():
    opt = fastgd.NAdam([np.ones(3)])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    sd["state"][0]["mu_product"] = 5.0
    with pytest.raises(ValueError, match="mu_product"):
        opt.load_state_dict(sd)
    assert opt.state[0]["mu_product"] < 1.0


def test_functional_step_out_of_range_is_a_value_error():
    p, g, m, v = (np.ones(3) for _ in range(4))
    with pytest.raises(ValueError, match="step"):
        fastgd.functional.adam_(p, g, m, v, step=10 ** 400)
    assert np.all(p == 1.0)


@pytest.mark.parametrize("flatten", [False, True])
def test_torch_refused_load_state_dict_changes_nothing(flatten):
    model = _model()
    opt = ft.Adam(model.parameters(), lr=0.01, flatten=flatten)
    _backward(model)
    opt.step()
    good = opt.state_dict()
    bad = copy.deepcopy(good)
    bad["param_groups"][0]["lr"] = 0.5
    first = next(iter(bad["state"]))
    bad["state"][first]["exp_avg"] = bad["state"][first]["exp_avg"].reshape(-1)[:-1]
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.01
    after = opt.state_dict()
    for k, s in good["state"].items():
        for name, t in s.items():
            assert torch.equal(t, after["state"][k][name])
    # the buffers the next step uses are the ones state_dict describes
    _backward(model, 2)
    opt.step()
    ref_model = _model()
    ref = torch.optim.Adam(ref_model.parameters(), lr=0.01)
    for seed in (1, 2):
        _backward(ref_model, seed)
        ref.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_torch_load_hooks_see_torch_types_and_may_store_their_own_keys():
    model = _model()
    opt = ft.Adam(model.parameters())
    _backward(model)
    opt.step()
    sd = opt.state_dict()
    seen = []

    def pre(optimizer, state_dict):
        seen.append(type(next(iter(state_dict["state"].values()))["step"]))

    def post(optimizer):
        optimizer.state["note"] = True        # torch allows a non-parameter key

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(post)
    opt.load_state_dict(sd)
    assert seen == [torch.Tensor] and opt.state["note"] is True
    _backward(model, 2)
    opt.step()


# --- copies and pickles ----------------------------------------------------------------------

def test_optimizer_over_flatparams_steps_after_pickle_and_deepcopy():
    flat = fastgd.FlatParams([np.ones((3, 2)), np.ones(4)])
    opt = fastgd.Adam(flat, lr=0.1)
    flat.grad[:] = 0.5
    opt.step()
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        data = clone.param_groups[0]["params"][0]
        before = data.copy()
        clone.step()                           # grads default to the copied FlatParams' buffer
        assert not np.array_equal(before, data)
    opt.step()


@pytest.mark.parametrize("flatten", [False, True])
def test_deepcopy_of_a_torch_optimizer_steps_like_the_original(flatten):
    model = _model()
    opt = ft.AdamW(model.parameters(), lr=0.01, flatten=flatten)
    _backward(model)
    opt.step()
    model2, opt2 = copy.deepcopy((model, opt))
    for m, o in ((model, opt), (model2, opt2)):
        _backward(m, 3)
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


# --- MultiSteps through the public interface -------------------------------------------------

from test_threads import _Slow  # noqa: E402  (an Adam whose kernel pass waits for a signal)


@pytest.mark.timeout(60)
def test_multisteps_goes_through_the_optimizers_thread_guard(rng):
    p = rng.standard_normal(50)
    opt = _Slow([p])
    opt.entered, opt.release = threading.Event(), threading.Event()
    multi = fastgd.MultiSteps(opt, every_k=1)
    first = threading.Thread(target=opt.step, args=([rng.standard_normal(50)],))
    first.start()
    assert opt.entered.wait(30)
    before = p.copy()
    with pytest.raises(RuntimeError, match="another thread"):
        multi.step([rng.standard_normal(50)])
    assert np.array_equal(p, before)
    opt.release.set()
    first.join(30)


def test_multisteps_refused_load_and_nonfinite_error_change_nothing(rng):
    p = rng.standard_normal(6)
    multi = fastgd.MultiSteps(fastgd.Adam([p], max_grad_norm=1.0, error_if_nonfinite=True), every_k=2)
    multi.step([rng.standard_normal(6)])
    acc_before, mini_before = multi._acc[0].copy(), multi.mini_step
    bad = rng.standard_normal(6)
    bad[2] = np.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        multi.step([bad])
    assert multi.mini_step == mini_before and np.array_equal(multi._acc[0], acc_before)
    assert multi.optimizer.state == {}
    sd = multi.state_dict()
    sd["mini_step"] = 7
    with pytest.raises(ValueError, match="mini_step"):
        multi.load_state_dict(sd)
    assert multi.mini_step == mini_before and np.array_equal(multi._acc[0], acc_before)


def test_fit_refuses_clipping_twice():
    from fastgd.train import LinearRegression, fit
    X = np.random.default_rng(0).standard_normal((20, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    model = LinearRegression(3)
    with pytest.raises(ValueError, match="already clips"):
        fit(model, fastgd.SGD([model.params], lr=0.1, max_grad_norm=1.0), X, y, epochs=1,
            clip_grad_norm=1.0)


# --- fidelity ----------------------------------------------------------------------------------

def test_nadam_float64_matches_torch_to_1e12_over_200_steps():
    """torch keeps mu_product in a float32 tensor and rounds it every step; fastgd.torch follows
    that arithmetic (fastgd.optim keeps it in float64, documented)."""
    model, ref = _model(), _model()
    opt, topt = ft.NAdam(model.parameters(), lr=1e-2), torch.optim.NAdam(ref.parameters(), lr=1e-2)
    for step in range(200):
        for m, o in ((model, opt), (ref, topt)):
            _backward(m, step)
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert opt.state[p]["mu_product"].item() == topt.state[q]["mu_product"].item()


def test_spec_defaults_are_torchs():
    """Each spec's defaults are its torch.optim peer's (one place, and the right values)."""
    import inspect
    for name, cls in (("adam", "Adam"), ("sgd", "SGD"), ("adagrad", "Adagrad"), ("rmsprop", "RMSprop"),
                      ("adamax", "Adamax"), ("nadam", "NAdam"), ("radam", "RAdam")):
        sig = inspect.signature(getattr(torch.optim, cls))
        for option, default in SPECS[name].options:
            assert sig.parameters[option].default == default, (name, option)


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_lion_decay_to_exactly_zero_keeps_inf_times_zero_nan(backend):
    """lr * weight_decay == 1 makes the decay exactly 0 in the reference; a contracted FMA made
    it -2e-17 in Cython, so an inf parameter became -inf instead of NaN (fuzzer, seed 2)."""
    out = {}
    for be in (backend, "numpy"):
        p = np.array([np.inf, 1.0, -np.inf, 2.0], np.float32)
        with fastgd.use_backend(be), np.errstate(invalid="ignore"):
            fastgd.functional.lion_(p, np.ones(4, np.float32), np.zeros(4, np.float32), lr=1e-4,
                                    weight_decay=1e4)
        out[be] = p
    np.testing.assert_array_equal(out[backend], out["numpy"])
    assert np.isnan(out[backend][0]) and np.isnan(out[backend][2])
