"""fastgd.torch's kept kernel tables (fastgd._core.Table, issue 14): a group's step after the
first checks, in a few vectorised passes, that its table still holds. Whatever a user changes
between steps (a new gradient tensor, new parameter data, a loaded state_dict, a new group, an
lr, a state entry, one step count, a group's options), the step is the one without a table, bit for bit, and
torch.optim's; a bad gradient still raises before anything is written.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastgd  # noqa: E402
import fastgd.torch as ft  # noqa: E402
from _helpers import require_backend  # noqa: E402

SHAPES = [(7, 5), (5,), (33,), (4, 4, 2), (1,), (0,)]


@pytest.fixture(autouse=True)
def cython_one_thread():
    # one backend (no new Numba compiles), one torch thread (a loaded machine)
    require_backend("cython")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with fastgd.use_backend("cython"):
        yield
    torch.set_num_threads(n)


def _params(shapes=SHAPES, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g).to(dtype)) for s in shapes]


def _untabled(opt):
    """``opt`` stepping without tables: the reference its tabled twin must equal bitwise."""
    opt._make_table = lambda *args: None
    return opt


def _set_grads(params, step, skip=()):
    """New gradient tensors (as after zero_grad(set_to_none=True) and backward)."""
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        p.grad = None if i in skip else torch.randn(p.shape, generator=g).to(p.dtype)


def _same(a, b):
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(a, b))


def _event(step, params, opt, extra):
    """What a user may do between steps; the same to each optimizer of a run."""
    if step == 3:                                  # new parameter data at a new address
        params[0].data = params[0].data.clone()
    elif step == 4:                                # a schedule: the table stays
        for group in opt.param_groups:
            group["lr"] *= 0.5
    elif step == 6:                                # a checkpoint loaded mid-run
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    elif step == 8:                                # a group added
        opt.add_param_group({"params": extra[2:], "lr": 3e-3})
        params += extra[2:]
    elif step == 11:                               # a state entry replaced
        opt.state[params[2]]["exp_avg"] = opt.state[params[2]]["exp_avg"] * 0.5
    elif step == 12:                               # one parameter's step count changed
        opt.state[params[1]]["step"].fill_(3.0)
    elif step == 13:                               # a parameter replaced in a group's list
        opt.param_groups[0]["params"][4] = params[4] = extra[0]
    elif step == 15:                               # and one added
        opt.param_groups[0]["params"].append(extra[1])
        params.append(extra[1])
    elif step == 16:                               # the gradient tensors kept, rewritten
        return "in place"
    elif step == 17:                               # a parameter's state deleted: made anew
        del opt.state[params[0]]


def _run(opt, params, extra, steps=20):
    out = []
    for step in range(steps):
        how = _event(step, params, opt, extra)
        if how == "in place" and all(p.grad is not None for p in params):
            g = torch.Generator().manual_seed(100 + step)
            for p in params:
                p.grad.copy_(torch.randn(p.shape, generator=g).to(p.dtype))
        else:
            _set_grads(params, step, skip={1} if step == 9 else ())   # 9: one without grad, 10: it has one again
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def test_tabled_steps_equal_untabled_and_torch_through_every_change():
    kw = dict(lr=1e-2, weight_decay=0.1)
    runs = {}
    for name, make in (("tabled", lambda ps: ft.AdamW(ps, **kw)),
                       ("untabled", lambda ps: _untabled(ft.AdamW(ps, **kw))),
                       ("torch", lambda ps: torch.optim.AdamW(ps, **kw))):
        params, extra = _params(), _params([(6,), (3,), (3, 3), (2,)], seed=1)
        opt = make(params)
        runs[name] = _run(opt, params, extra)
        if name == "tabled":
            tabled = opt
    assert len(tabled._tables) == 2         # both groups stepped through their tables
    for step, (a, b, c) in enumerate(zip(runs["tabled"], runs["untabled"], runs["torch"])):
        assert _same(a, b), f"step {step}: tabled != untabled"
        for x, y in zip(a, c):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=f"step {step} vs torch")


def test_the_table_is_kept_and_used():
    params = _params()
    opt = ft.AdamW(params, lr=1e-2)
    for step in range(2):
        _set_grads(params, step)
        opt.step()
    group = opt.param_groups[0]
    table = opt._tables[id(group)]
    seen = []
    real = opt._run_table
    opt._run_table = lambda *args: (seen.append(args[1]), real(*args))
    for step in range(2, 5):
        _set_grads(params, step)
        group["lr"] = 1e-3 * step            # a schedule changes lr: the table stays
        opt.step()
    assert seen == [table] * 3 and opt._tables[id(group)] is table
    # the step counts are views of one tensor, advanced together, still torch's float32
    steps = [opt.state[p]["step"] for p in params]
    assert all(s.dtype == torch.float32 and s.dim() == 0 and s.item() == 5.0 for s in steps)


def _bad_grads(p):
    """(how, exception, message): gradients fastgd refuses, made after a table was."""
    yield "float64 data", TypeError, "dtype", lambda: setattr(p.grad, "data", p.grad.data.double())
    yield "other shape", ValueError, "shape", lambda: setattr(p.grad, "data", p.grad.data.reshape(-1)[:5].clone())
    yield "its parameter", ValueError, "shares memory", lambda: setattr(p, "grad", p.detach())


@pytest.mark.parametrize("case", range(3), ids=["float64", "shape", "alias"])
def test_a_bad_gradient_raises_before_any_write_with_a_table(case):
    params = _params()
    opt = ft.AdamW([{"params": params[:3]}, {"params": params[3:]}], lr=1e-2)
    for step in range(3):
        _set_grads(params, step)
        opt.step()
    assert len(opt._tables) == 2
    _set_grads(params, 3)
    how, exc, message, spoil = list(_bad_grads(params[3]))[case]
    spoil()                                 # in the second group: the first is checked first
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    with pytest.raises(exc, match=message):
        opt.step()
    assert _same(before, params), how
    after = opt.state_dict()["state"]
    assert all(torch.equal(v, after[i][k]) for i, s in state.items() for k, v in s.items()), how


def test_a_non_contiguous_gradient_is_stepped_as_torch_does():
    kw = dict(lr=1e-2)
    out = []
    for make in (lambda ps: ft.AdamW(ps, **kw), lambda ps: torch.optim.AdamW(ps, **kw)):
        params = _params()
        opt = make(params)
        for step in range(4):
            _set_grads(params, step)
            if step == 3:                                  # strided, as torch allows
                params[0].grad = torch.randn(5, 7, generator=torch.Generator().manual_seed(5)).t()
            opt.step()
        out.append(params)
    for x, y in zip(*out):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda ps: ft.AdamW(ps, lr=1e-2, bf16_stochastic_round=True, stochastic_round_seed=7),
    lambda ps: ft.AdamW8bit(ps, lr=1e-2, min_8bit_size=30),
], ids=["bf16-sr", "8bit-interleaved"])
def test_tabled_other_storages_equal_untabled_bitwise(make):
    """Stochastic rounding's per-tensor keys (computed at once) and a group interleaving
    quantized and 32-bit states (one call per storage) give the untabled step's bits."""
    shapes = [(40, 8), (8,), (64,), (5,), (31,)]
    dtype = torch.bfloat16
    runs = []
    for tabled in (True, False):
        params = _params(shapes, dtype)
        opt = make(params)
        if not tabled:
            _untabled(opt)
        for step in range(5):
            _set_grads(params, step)
            opt.step()
        runs.append((params, opt))
    assert runs[0][1]._tables and not runs[1][1]._tables
    assert _same(runs[0][0], runs[1][0])
    for p, q in zip(runs[0][0], runs[1][0]):
        for k, v in runs[0][1].state[p].items():
            assert torch.equal(v, runs[1][1].state[q][k]), k


def test_an_option_changing_the_state_arrays_makes_a_new_table():
    """amsgrad switched on mid-run: a state array more (torch.optim.AdamW cannot do this)."""
    runs = []
    for tabled in (True, False):
        params = _params()
        opt = ft.AdamW(params, lr=1e-2)
        if not tabled:
            _untabled(opt)
        for step in range(6):
            if step == 3:
                opt.param_groups[0]["amsgrad"] = True
            _set_grads(params, step)
            opt.step()
        runs.append(params)
        assert "max_exp_avg_sq" in opt.state[params[0]]
    assert _same(*runs)


@pytest.mark.parametrize("make", [lambda ps: ft.SGD(ps, lr=0.1), lambda ps: ft.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: ft.Lion(ps, lr=1e-3)], ids=["SGD", "SGD-momentum", "Lion"])
def test_tabled_rules_without_step_counts_equal_untabled(make):
    runs = []
    for tabled in (True, False):
        params = _params()
        opt = make(params)
        if not tabled:
            _untabled(opt)
        for step in range(4):
            _set_grads(params, step, skip={2} if step == 2 else ())
            opt.step()
        assert bool(opt._tables) == tabled
        runs.append(params)
    assert _same(*runs)


@pytest.mark.parametrize("tables", [True, False])
def test_a_state_tensor_given_new_data_is_stepped_there(tables):
    """``opt.state[p]["exp_avg"].data = t`` (the same tensor object, new memory, as offloading
    code does) between steps: fastgd.torch steps the new memory, as torch.optim does, with or
    without the group's kept table."""
    ps, qs = _params(), _params()
    opt = ft.AdamW(ps, lr=0.1, weight_decay=0.01)
    if not tables:
        _untabled(opt)
    ref = torch.optim.AdamW(qs, lr=0.1, weight_decay=0.01, foreach=False)
    for step in range(6):
        _set_grads(ps, step)
        _set_grads(qs, step)
        if step == 3:
            for o, group in ((opt, ps), (ref, qs)):
                for p in group[:3]:
                    st = o.state[p]
                    st["exp_avg"].data = st["exp_avg"].data.clone() + 0.25
                    st["exp_avg_sq"].data = st["exp_avg_sq"].data.clone() * 2.0
        opt.step()
        ref.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"], rtol=1e-5, atol=1e-6)
