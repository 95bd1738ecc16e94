import math
"""fastgd.torch against torch.optim: the same MLP trained by both from the same seed.

Every optimizer and its main options over 200 steps (losses and parameters agree to rtol 1e-5 in
float32), flatten=True, state_dict interchange both ways mid-run, lr schedulers, fused clipping,
hooks, and the errors for what fastgd.torch cannot do.
"""
import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastgd  # noqa: E402
import fastgd.torch as ft  # noqa: E402
from _helpers import BACKENDS, require_backend  # noqa: E402

STEPS = 200


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # A tiny MLP gains nothing from threads, and on a loaded machine torch's OpenMP workers
    # spin-waiting for a busy core make each step ~20x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
# float64: 1e-9, not tighter, because torch keeps NAdam's mu_product in a float32 tensor.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}
ATOL = {torch.float32: 1e-6, torch.float64: 1e-10}


class TorchLion(torch.optim.Optimizer):
    """Lion as lion-pytorch writes it (torch.optim has none): the oracle for ft.Lion."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)
                p.add_((m * b1 + g * (1 - b1)).sign_(), alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)


def torch_class(name):
    return TorchLion if name == "Lion" else getattr(torch.optim, name)


def torch_kwargs(name):
    # The single-tensor path: torch's reference implementation on the CPU.
    return {} if name == "Lion" else {"foreach": False}


# (optimizer, options): every optimizer with its main options. The adaptive rules run at their
# default-sized learning rates: at lr=1e-2 a 200-step float32 trajectory amplifies rounding to ~3e-6
# (torch.optim.Adam's own fused and single-tensor paths differ that much there), at 1e-3 to ~1e-7.
CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, maximize=True)),
    ("Adam", dict(lr=1e-3)),
    ("Adam", dict(lr=1e-3, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=1e-3, maximize=True, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=1e-3, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adagrad", dict(lr=0.05)),
    ("Adagrad", dict(lr=0.05, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-3)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, weight_decay=1e-2)),
    ("RMSprop", dict(lr=1e-3, centered=True)),
    ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.5, maximize=True)),
    ("Adamax", dict()),
    ("Adamax", dict(weight_decay=1e-2, maximize=True)),
    ("NAdam", dict()),
    ("NAdam", dict(weight_decay=1e-2)),
    ("NAdam", dict(weight_decay=1e-2, decoupled_weight_decay=True, momentum_decay=1e-2)),
    ("RAdam", dict()),
    ("RAdam", dict(weight_decay=1e-2, decoupled_weight_decay=True)),
    ("RAdam", dict(weight_decay=1e-2, maximize=True)),
    ("Lion", dict(lr=1e-4)),
    ("Lion", dict(lr=1e-4, weight_decay=0.1, betas=(0.95, 0.98))),
]
NAMES = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Lion"]
# One option set per optimizer with momentum-like state, for the slower scenarios.
STATEFUL = {
    "SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(amsgrad=True), "AdamW": dict(),
    "Adagrad": dict(lr=0.05, initial_accumulator_value=0.1), "RMSprop": dict(lr=1e-3, centered=True, momentum=0.5),
    "Adamax": dict(), "NAdam": dict(weight_decay=1e-2), "RAdam": dict(),
    "Lion": dict(lr=1e-4),
}


def case_id(case):
    name, opts = case
    return name + "".join(f",{k}={v}" for k, v in opts.items())


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    # Tanh (not ReLU): the trajectories must not hinge on the sign of a near-zero activation.
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def make_data(dtype=torch.float32, batches=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 8, generator=g, dtype=dtype), torch.randn(32, 4, generator=g, dtype=dtype))
            for _ in range(batches)]


def train(model, opt, data, steps, start=0, maximize=False, scheduler=None, clip=None):
    losses = []
    for i in range(start, start + steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        (-loss if maximize else loss).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return np.array(losses)


def assert_same(mine, theirs, dtype=torch.float32, what=""):
    """Parameters (and losses) of two runs agree."""
    for i, (a, b) in enumerate(zip(mine.parameters(), theirs.parameters())):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=RTOL[dtype],
                                   atol=ATOL[dtype], err_msg=f"{what} parameter {i}")


def assert_states_same(opt, topt, dtype=torch.float32):
    for p, q in zip([p for g in opt.param_groups for p in g["params"]],
                    [p for g in topt.param_groups for p in g["params"]]):
        mine, theirs = opt.state[p], topt.state[q]
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            if key == "step":
                assert mine[key].dtype == torch.float32 and float(mine[key]) == float(value)
            else:
                # Sums like a momentum buffer can cancel: tolerance relative to the array's scale.
                scale = float(value.abs().max())
                np.testing.assert_allclose(mine[key].numpy(), value.numpy(), rtol=RTOL[dtype] * 10,
                                           atol=ATOL[dtype] + RTOL[dtype] * 10 * scale, err_msg=key)


def run_pair(name, opts, dtype=torch.float32, steps=STEPS, flatten=False, **train_kw):
    data = make_data(dtype)
    theirs, mine = make_model(dtype), make_model(dtype)
    topt = torch_class(name)(theirs.parameters(), **opts, **torch_kwargs(name))
    opt = getattr(ft, name)(mine.parameters(), **opts, flatten=flatten)
    maximize = opts.get("maximize", False)
    tl = train(theirs, topt, data, steps, maximize=maximize, **train_kw)
    ml = train(mine, opt, data, steps, maximize=maximize, **train_kw)
    return mine, theirs, opt, topt, ml, tl


# --- trajectories -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_optim_over_200_steps(case):
    name, opts = case
    mine, theirs, opt, topt, ml, tl = run_pair(name, opts)
    np.testing.assert_allclose(ml, tl, rtol=RTOL[torch.float32], atol=ATOL[torch.float32], err_msg="losses")
    assert_same(mine, theirs, what=case_id(case))
    assert_states_same(opt, topt)
    if not opts.get("maximize"):
        assert ml[-1] < ml[0], "training did not reduce the loss"


@pytest.mark.parametrize("name", ["SGD", "AdamW", "RMSprop", "NAdam"])
def test_matches_torch_optim_float64(name):
    mine, theirs, opt, topt, ml, tl = run_pair(name, STATEFUL[name], dtype=torch.float64, steps=50)
    np.testing.assert_allclose(ml, tl, rtol=RTOL[torch.float64])
    assert_same(mine, theirs, torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_flatten_gives_the_same_trajectory(name):
    opts = STATEFUL[name]
    mine, theirs, opt, topt, ml, tl = run_pair(name, opts, flatten=True, steps=100)
    np.testing.assert_allclose(ml, tl, rtol=RTOL[torch.float32], atol=ATOL[torch.float32])
    assert_same(mine, theirs, what=f"{name} flatten")
    assert_states_same(opt, topt)
    # Parameters, gradients and state are views of one buffer.
    params = list(mine.parameters())
    base = params[0].data_ptr()
    size = params[0].element_size()
    offset = 0
    for p in params:
        assert p.data_ptr() == base + offset * size
        offset += p.numel()
    (flat,) = opt._flats[0][1]
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(params, flat.grad_views))


def test_flatten_equals_unflattened_fastgd():
    data = make_data()
    a, b = make_model(), make_model()
    oa = ft.AdamW(a.parameters(), lr=1e-3)
    ob = ft.AdamW(b.parameters(), lr=1e-3, flatten=True)
    np.testing.assert_array_equal(train(a, oa, data, 50), train(b, ob, data, 50))
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_flatten_survives_grads_set_to_none_and_frozen_params():
    """model.zero_grad() (grads to None) and a frozen parameter: still torch's trajectory."""
    data = make_data()
    theirs, mine = make_model(), make_model()
    for m in (theirs, mine):
        m[0].bias.requires_grad_(False)
    topt = torch.optim.AdamW(theirs.parameters(), lr=1e-3, foreach=False)
    opt = ft.AdamW(mine.parameters(), lr=1e-3, flatten=True)
    frozen = mine[0].bias.detach().clone()
    for i in range(30):
        x, y = data[i % len(data)]
        for m, o in ((theirs, topt), (mine, opt)):
            if i % 2:
                m.zero_grad()  # sets .grad to None: autograd allocates new gradients
            else:
                o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    assert_same(mine, theirs, what="flatten with grads set to None")
    assert mine[0].bias.grad is None and torch.equal(mine[0].bias.detach(), frozen)
    assert len(opt.state[mine[0].bias]) == 0


def test_flatten_refuses_replaced_parameter_data():
    model = make_model()
    opt = ft.Adam(model.parameters(), flatten=True)
    model[0].weight.data = model[0].weight.data.clone()
    model(torch.randn(2, 8)).sum().backward()
    with pytest.raises(RuntimeError, match="replaced"):
        opt.step()


def test_param_groups_and_add_param_group():
    data = make_data()
    theirs, mine = make_model(), make_model()

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 1e-3}, {"params": m[2].parameters(), "weight_decay": 0.5}]

    topt = torch.optim.AdamW(groups(theirs), lr=1e-3, foreach=False)
    opt = ft.AdamW(groups(mine), lr=1e-3)
    topt.add_param_group({"params": theirs[4].parameters(), "betas": (0.5, 0.9)})
    opt.add_param_group({"params": mine[4].parameters(), "betas": (0.5, 0.9)})
    np.testing.assert_allclose(train(mine, opt, data, 100), train(theirs, topt, data, 100), rtol=1e-5)
    assert_same(mine, theirs)
    assert [set(g) for g in opt.state_dict()["param_groups"]] == [set(g) for g in topt.state_dict()["param_groups"]]


def test_grad_none_is_skipped():
    p, q = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
    before = q.detach().clone()
    opt = ft.AdamW([p, q], lr=0.1)
    p.grad = torch.randn(5)
    opt.step()
    assert torch.equal(q.detach(), before) and len(opt.state[q]) == 0
    assert float(opt.state[p]["step"]) == 1.0


# --- checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("flatten", [False, True], ids=["", "flatten"])
@pytest.mark.parametrize("name", NAMES[:-1])
def test_state_dict_interchange_both_ways_mid_run(name, flatten):
    opts = STATEFUL[name]
    data = make_data()
    # torch -> fastgd: 30 steps of torch, then fastgd from torch's checkpoint; torch goes on alone.
    ref, mine = make_model(), make_model()
    ropt = torch_class(name)(ref.parameters(), **opts, **torch_kwargs(name))
    train(ref, ropt, data, 30)
    mine.load_state_dict(ref.state_dict())
    opt = getattr(ft, name)(mine.parameters(), **opts, flatten=flatten)
    opt.load_state_dict(copy.deepcopy(ropt.state_dict()))
    np.testing.assert_allclose(train(mine, opt, data, 30, start=30), train(ref, ropt, data, 30, start=30),
                               rtol=1e-5, atol=1e-6)
    assert_same(mine, ref, what="torch -> fastgd")
    # fastgd -> torch: continue in torch from fastgd's checkpoint.
    back = make_model()
    back.load_state_dict(mine.state_dict())
    bopt = torch_class(name)(back.parameters(), **opts, **torch_kwargs(name))
    saved = opt.state_dict()
    assert set(saved["param_groups"][0]) == set(ropt.state_dict()["param_groups"][0])
    bopt.load_state_dict(copy.deepcopy(saved))
    np.testing.assert_allclose(train(back, bopt, data, 30, start=60), train(mine, opt, data, 30, start=60),
                               rtol=1e-5, atol=1e-6)
    assert_same(back, mine, what="fastgd -> torch")
    assert_states_same(opt, bopt)


def test_loaded_state_is_private():
    """Loading copies the state (torch.optim would alias the checkpoint's tensors)."""
    model = make_model()
    topt = torch.optim.Adam(model.parameters(), foreach=False)
    train(model, topt, make_data(), 3)
    sd = topt.state_dict()
    before = sd["state"][0]["exp_avg"].clone()
    other = make_model()
    opt = ft.Adam(other.parameters())
    opt.load_state_dict(sd)
    for p in other.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(sd["state"][0]["exp_avg"], before)
    assert not torch.equal(opt.state[other[0].weight]["exp_avg"], before)


# --- schedulers, clipping, hooks ------------------------------------------------------------------

@pytest.mark.parametrize("sched", ["step", "onecycle", "cosine"])
def test_lr_scheduler(sched):
    data = make_data()
    theirs, mine = make_model(), make_model()
    topt = torch.optim.AdamW(theirs.parameters(), lr=1e-3, foreach=False)
    opt = ft.AdamW(mine.parameters(), lr=1e-3)

    def make(o):
        if sched == "step":
            return torch.optim.lr_scheduler.StepLR(o, step_size=20, gamma=0.5)
        if sched == "onecycle":  # also cycles betas[0]
            return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=3e-3, total_steps=STEPS)
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS)

    ts, ms = make(topt), make(opt)
    np.testing.assert_allclose(train(mine, opt, data, STEPS, scheduler=ms),
                               train(theirs, topt, data, STEPS, scheduler=ts), rtol=1e-5, atol=1e-6)
    assert_same(mine, theirs, what=sched)
    assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]


@pytest.mark.parametrize("flatten", [False, True], ids=["", "flatten"])
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_max_grad_norm_equals_clip_then_step(name, flatten):
    opts = STATEFUL[name]
    data = make_data()
    theirs, mine = make_model(), make_model()
    topt = torch.optim.AdamW(theirs.parameters(), **opts, foreach=False) if name == "AdamW" else \
        torch.optim.SGD(theirs.parameters(), **opts, foreach=False)
    opt = getattr(ft, name)(mine.parameters(), **opts, max_grad_norm=0.05, flatten=flatten)
    tl = train(theirs, topt, data, 100, clip=0.05)
    ml = train(mine, opt, data, 100)
    np.testing.assert_allclose(ml, tl, rtol=1e-5, atol=1e-6)
    assert_same(mine, theirs, what="clipped")
    # The clip was active, and the gradients themselves are left as backward wrote them.
    grads = [p.grad.clone() for p in mine.parameters()]
    assert opt.last_grad_norm > 0.05
    np.testing.assert_allclose(opt.last_grad_norm,
                               torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])).item(),
                               rtol=1e-5)


@pytest.mark.parametrize("flatten", [False, True], ids=["", "flatten"])
def test_max_grad_norm_nonfinite_skips_and_counts_or_raises_and_changes_nothing(flatten):
    """One non-finite policy in every front end: skip the step and count it (as fastgd.optim,
    GradScaler, optax's apply_if_finite); error_if_nonfinite=True raises; nothing changes."""
    for raising in (False, True):
        model = make_model()
        opt = ft.AdamW(model.parameters(), max_grad_norm=1.0, error_if_nonfinite=raising,
                       flatten=flatten)
        model(torch.randn(2, 8)).sum().backward()
        model[0].weight.grad[0, 0] = float("nan")
        before = [p.detach().clone() for p in model.parameters()]
        if raising:
            with pytest.raises(RuntimeError, match="non-finite"):
                opt.step()
        else:
            opt.step()
            assert opt.skipped_steps == 1 and math.isnan(opt.last_grad_norm)
        assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
        assert flatten or not any(opt.state.get(p) for p in model.parameters())


def test_max_grad_norm_inf_measures_without_clipping():
    a, b = make_model(), make_model()
    x, y = make_data()[0]
    oa = ft.AdamW(a.parameters(), max_grad_norm=math.inf)
    ob = ft.AdamW(b.parameters())
    for m, o in ((a, oa), (b, ob)):
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()
    expected = torch.nn.utils.get_total_norm([p.grad for p in b.parameters()]).item()
    assert oa.last_grad_norm == pytest.approx(expected, rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_clipping_options_are_checked_on_assignment():
    opt = ft.SGD(make_model().parameters(), lr=0.1)
    for value in (-1, 0.0, float("nan"), "1"):
        with pytest.raises((TypeError, ValueError), match="max_grad_norm"):
            opt.max_grad_norm = value
    assert opt.max_grad_norm is None


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    a, b = make_model(), make_model()
    x, y = make_data()[0]
    for m in (a, b):
        torch.nn.functional.mse_loss(m(x), y).backward()
    tn = torch.nn.utils.clip_grad_norm_(a.parameters(), 0.01, norm_type=norm_type)
    mn = ft.clip_grad_norm_(b.parameters(), 0.01, norm_type=norm_type)
    assert isinstance(mn, torch.Tensor) and mn.dtype == tn.dtype
    np.testing.assert_allclose(mn.item(), tn.item(), rtol=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_clip_grad_norm_nonfinite():
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.tensor([1.0, float("inf"), 0.0, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        ft.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    q = torch.nn.Parameter(torch.randn(4))
    assert ft.clip_grad_norm_([q], 1.0).item() == 0.0  # no gradients: norm 0, like torch


def test_closure_and_hooks():
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=1e-3)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    x, y = make_data()[0]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    for _ in range(20):
        last = opt.step(closure)
    assert calls[:2] == ["pre", "post"] and len(calls) == 42
    assert last.item() < first.item()


def _hook_trace(make):
    """The calls a torch.optim step makes to global and per-optimizer hooks, the grad mode
    the step runs in, and what a pre hook's (args, kwargs) does: for torch and for fastgd."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    p = torch.nn.Parameter(torch.randn(7))
    opt = make([p])
    calls = []
    seen = {}

    def closure():
        seen["closure grad mode"] = torch.is_grad_enabled()
        p.grad = torch.full_like(p, 0.5)
        return torch.tensor(3.0)

    def pre(o, args, kwargs):
        calls.append(("pre", o is opt, args[0] is opt, args[1:], tuple(kwargs)))
        return args[:1], {"closure": closure}      # the step gets the closure from the hook
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", len(a)))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", tuple(k)))),
               opt.register_step_pre_hook(pre),
               opt.register_step_post_hook(lambda o, a, k: calls.append(("post", len(a), tuple(k))))]
    try:
        before = p.detach().clone()
        loss = opt.step(None)
        with torch.no_grad():
            opt.step(None)
            seen["grad mode after a step under no_grad"] = torch.is_grad_enabled()
    finally:
        for h in handles:
            h.remove()
    seen["grad mode after"] = torch.is_grad_enabled()
    opt.step(closure)                    # hooks removed: no calls
    return calls, seen, loss.item(), bool((p.detach() != before).all())


def test_step_hooks_and_grad_mode_match_torch():
    """fastgd.torch wraps step in its own lean form of torch.optim's wrapper (hooks, profiler
    range, no_grad): the same hook calls in the same order with the same arguments, a pre
    hook's (args, kwargs) passed on, the same grad modes."""
    want = _hook_trace(lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    got = _hook_trace(lambda ps: ft.AdamW(ps, lr=1e-2))
    assert got == want
    assert want[0][:2] == [("global pre", 2), ("pre", True, True, (None,), ())] and want[1] == {
        "closure grad mode": True, "grad mode after a step under no_grad": False,
        "grad mode after": True}


def test_step_pre_hook_bad_return_raises_and_writes_nothing():
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    opt = ft.Adam([p])
    before = p.detach().clone()
    opt.register_step_pre_hook(lambda o, a, k: "not a pair")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state


def test_step_profiler_range():
    """Under torch.profiler a step is the range torch.optim names it, and not otherwise."""
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    opt = ft.AdamW([p])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = [e.name for e in prof.events()]
    assert names.count("Optimizer.step#AdamW.step") == 1


def test_import_fastgd_does_not_import_torch():
    code = "import sys, fastgd; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", f"import fastgd imported {out.stdout.strip()}"


def test_same_constructor_defaults_and_initial_state_as_torch():
    p = torch.nn.Parameter(torch.randn(3))
    for name in NAMES[:-1]:
        mine, theirs = getattr(ft, name)([p]), getattr(torch.optim, name)([p])
        assert mine.defaults == theirs.defaults, name
        # Adagrad creates its state in the constructor; the others on the first step.
        sd, tsd = mine.state_dict(), theirs.state_dict()
        assert sd["param_groups"] == tsd["param_groups"], name
        assert {k: set(v) for k, v in sd["state"].items()} == {k: set(v) for k, v in tsd["state"].items()}, name


# --- what it refuses --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, torch.float8_e4m3fn])
def test_refuses_complex_int_and_8bit_float_params(dtype):
    p = torch.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype).replace("torch.", "")):
        ft.AdamW([p])


def test_refuses_non_cpu_tensors():
    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        ft.SGD([p])


def test_refuses_sparse_grads():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = ft.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_refuses_differentiable_and_capturable():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="differentiable"):
        ft.Adam([p], differentiable=True)
    with pytest.raises(ValueError, match="capturable"):
        ft.AdamW([p], capturable=True)


def test_refuses_bad_hyperparameters_before_any_write():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="learning rate"):
        ft.AdamW([p], lr=-1.0)
    opt = ft.AdamW([p])
    p.grad = torch.randn(3)
    opt.param_groups[0]["betas"] = (1.5, 0.9)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="beta"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_steps_non_contiguous_params_as_torch_does():
    """A transposed parameter (torch's own optimizer tests use them) is stepped through a
    contiguous copy, with torch.optim's trajectory."""
    torch.manual_seed(0)
    base = torch.randn(4, 3)
    mine = torch.nn.Parameter(base.clone().t())
    theirs = torch.nn.Parameter(base.clone().t())
    assert not mine.is_contiguous()
    om, ot = ft.AdamW([mine], lr=0.1), torch.optim.AdamW([theirs], lr=0.1)
    for _ in range(5):
        g = torch.randn(3, 4)
        mine.grad, theirs.grad = g.clone(), g.clone()
        om.step()
        ot.step()
    torch.testing.assert_close(mine, theirs)
    assert not mine.is_contiguous()


def test_uses_the_active_backend():
    """fastgd.use_backend selects the kernels fastgd.torch runs on."""
    data = make_data()
    runs = []
    require_backend(*BACKENDS)
    for backend in BACKENDS:
        with fastgd.use_backend(backend):
            model = make_model()
            runs.append(train(model, ft.AdamW(model.parameters(), lr=1e-3), data, 20))
    for r in runs[1:]:
        np.testing.assert_allclose(r, runs[0], rtol=1e-5)


def test_flatten_with_groups_added_later_and_mixed_dtypes():
    data = make_data()
    theirs, mine = make_model(), make_model()
    extra = [torch.nn.Parameter(torch.randn(5, dtype=torch.float64)) for _ in range(2)]
    mine_extra = [torch.nn.Parameter(e.detach().clone()) for e in extra]
    initial = [e.detach().clone() for e in extra]
    topt = torch.optim.Adam([{"params": theirs[0].parameters()}], lr=1e-3, foreach=False)
    opt = ft.Adam([{"params": mine[0].parameters()}], lr=1e-3, flatten=True)
    topt.add_param_group({"params": list(theirs[2:].parameters()) + extra, "lr": 2e-3})
    opt.add_param_group({"params": list(mine[2:].parameters()) + mine_extra, "lr": 2e-3})
    assert [f.dtype for f in opt._flats[1][1]] == [torch.float32, torch.float64]
    for i in range(50):
        x, y = data[i % len(data)]
        g = torch.randn(5, dtype=torch.float64)
        for model, o, ex in ((theirs, topt, extra), (mine, opt, mine_extra)):
            o.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            for e in ex:
                if e.grad is None:
                    e.grad = g.clone()
                else:  # flatten: the gradient is a view of the flat buffer; accumulate into it
                    e.grad += g
            o.step()
    assert_same(mine, theirs, what="flatten, two groups")
    for e, me in zip(extra, mine_extra):
        np.testing.assert_allclose(me.detach().numpy(), e.detach().numpy(), rtol=1e-12)
    assert not any(torch.equal(e.detach(), i) for e, i in zip(mine_extra, initial))


# --- the raw kernel path ------------------------------------------------------------------------

KERNEL_OF = {"Adam": "adam", "AdamW": "adam"}


@pytest.mark.parametrize("flatten", [False, True], ids=["", "flatten"])
@pytest.mark.parametrize("name", NAMES)
def test_step_calls_the_raw_kernel_not_the_functional_form(name, flatten, monkeypatch):
    """Every optimizer steps through the backend's kernel directly: the validated per-tensor
    fastgd.functional form (10-30 us of Python a call) is never used, one kernel call per tensor
    (one per flat buffer), and the trajectory is still torch's."""
    import fastgd.functional as F

    def refuse(*args, **kwargs):
        raise AssertionError("fastgd.torch called a fastgd.functional update rule")

    for rule in ("sgd_", "adam_", "adagrad_", "rmsprop_", "adamax_", "nadam_", "radam_", "lion_"):
        monkeypatch.setattr(F, rule, refuse)
    calls = []
    import fastgd._core
    real_kernel = fastgd._core.kernel

    def counting_kernel(kname, *args, **kwargs):
        fn = real_kernel(kname, *args, **kwargs)

        def counted(*a):
            calls.append(kname)
            return fn(*a)
        return counted

    monkeypatch.setattr(fastgd._core, "kernel", counting_kernel)
    steps = 5
    mine, theirs, opt, topt, ml, tl = run_pair(name, STATEFUL[name], steps=steps, flatten=flatten)
    np.testing.assert_allclose(ml, tl, rtol=RTOL[torch.float32], atol=ATOL[torch.float32])
    assert_same(mine, theirs, what=f"{name} raw")
    raw = KERNEL_OF.get(name, name.lower())
    # flatten: the single kernel per flat buffer; else one many-kernel call over the group's
    # tensors (all with the same step count here)
    assert calls == ([raw] * steps if flatten else [raw + "_many"] * steps)


# (optimizer, group options that fastgd.functional's form of the rule refuses, message)
BAD_OPTIONS = [
    ("SGD", dict(dampening=1.5), "dampening must be in"),
    ("SGD", dict(nesterov=True, dampening=0.5), "Nesterov momentum requires"),
    ("Adam", dict(betas=(1.5, 0.9)), "Invalid beta parameter at index 0"),
    ("AdamW", dict(lr=-1.0), "Invalid learning rate"),
    ("Adagrad", dict(eps=0.0), r"eps must be a finite number > 0.*torch.optim.Adagrad accepts it.*0 by 0"),
    ("Adagrad", dict(lr_decay=-1.0), "Invalid lr_decay value"),
    ("RMSprop", dict(alpha=1.0), r"alpha must be in \[0, 1\)"),
    ("RMSprop", dict(momentum=float("nan")), "Invalid momentum value: nan"),
    ("Adamax", dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1"),
    ("NAdam", dict(momentum_decay=-1.0), "Invalid momentum_decay value"),
    ("RAdam", dict(eps=float("inf")), "eps must be a finite number > 0"),
    ("Lion", dict(betas=(1.0, 0.99)), r"betas\[0\] must be in"),
    ("Lion", dict(weight_decay=-0.1), "weight_decay must be"),
]


@pytest.mark.parametrize("flatten", [False, True], ids=["", "flatten"])
@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=lambda b: b[0] + "".join(f",{k}={v}" for k, v in b[1].items()))
def test_bad_group_options_raise_before_any_write(bad, flatten):
    """A bad option in the last group raises (torch.optim's message where torch refuses the
    value too, else fastgd's, saying that torch accepts it and why fastgd does not) before the first group, stepped first, or any state is touched."""
    name, options, message = bad
    model = make_model()
    groups = [{"params": model[0].parameters()}, {"params": model[2:].parameters()}]
    opt = getattr(ft, name)(groups, **STATEFUL[name], flatten=flatten)
    data = make_data()
    train(model, opt, data, 3)
    opt.param_groups[1].update(options)
    opt.zero_grad()
    x, y = data[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict()["state"])
    with pytest.raises((ValueError, TypeError), match=message):
        opt.step()
    assert all(torch.equal(a, p.detach()) for a, p in zip(params, model.parameters()))
    after = opt.state_dict()["state"]
    assert set(after) == set(state)
    for i, s in state.items():
        assert set(after[i]) == set(s)
        assert all(torch.equal(v, after[i][k]) for k, v in s.items()), (i, sorted(s))


@pytest.mark.parametrize("name", ["SGD", "Adam", "NAdam"])
def test_refuses_gradient_sharing_memory_with_its_parameter_before_any_write(name):
    """As fastgd.functional refuses overlapping arrays: a gradient that is (a view of) its own
    parameter raises before anything is written."""
    p, q = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(6))
    opt = getattr(ft, name)([q, p], **STATEFUL[name])
    q.grad = torch.randn(6)
    p.grad = p.detach()[:]
    before = [q.detach().clone(), p.detach().clone()]
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    assert torch.equal(before[0], q.detach()) and torch.equal(before[1], p.detach())
    assert not opt.state[q] and not opt.state[p]
    p.grad = torch.randn(6)  # its own tensor: steps
    opt.step()
    assert not torch.equal(before[1], p.detach())


def test_refuses_state_sharing_memory():
    p = torch.nn.Parameter(torch.randn(6))
    opt = ft.Adam([p])
    p.grad = torch.randn(6)
    opt.step()
    opt.state[p]["exp_avg_sq"] = opt.state[p]["exp_avg"]
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
