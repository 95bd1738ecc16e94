"""Schedules: closed forms equal torch.optim.lr_scheduler step for step; binding; composition; errors."""
import math
import warnings

import numpy as np
import pytest

import fastgd
from fastgd import schedules as S

STEPS = 100
BASES = (0.1, 0.03)  # two param groups with different base rates


def _fastgd_opt():
    return fastgd.Adam([{"params": [np.zeros(3)], "lr": BASES[0]},
                        {"params": [np.zeros(2)], "lr": BASES[1]}])


def _run_fastgd(make):
    opt = _fastgd_opt()
    sched = make(opt)
    out = []
    for _ in range(STEPS):
        out.append([g["lr"] for g in opt.param_groups])
        sched.step()
    return np.array(out)


def _run_torch(make):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([{"params": [torch.zeros(3, requires_grad=True)], "lr": BASES[0]},
                           {"params": [torch.zeros(2, requires_grad=True)], "lr": BASES[1]}], lr=BASES[0])
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that scheduler.step() precedes optimizer.step()
        for _ in range(STEPS):
            out.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step()
    return np.array(out)


CASES = {
    "constant-torch": (lambda o: S.ConstantLR(o, factor=0.25, total_iters=7),
                       lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=7)),
    "step": (lambda o: S.StepLR(o, step_size=13, gamma=0.5),
             lambda L, o: L.StepLR(o, step_size=13, gamma=0.5)),
    "multistep": (lambda o: S.MultiStepLR(o, milestones=[10, 30, 31, 80], gamma=0.3),
                  lambda L, o: L.MultiStepLR(o, milestones=[10, 30, 31, 80], gamma=0.3)),
    "exponential": (lambda o: S.ExponentialLR(o, gamma=0.97),
                    lambda L, o: L.ExponentialLR(o, gamma=0.97)),
    "inverse-time": (lambda o: S.InverseTimeLR(o, decay_rate=0.5, decay_steps=3),
                     lambda L, o: L.LambdaLR(o, lambda t: 1 / (1 + 0.5 * t / 3))),
    "inverse-time-staircase": (lambda o: S.InverseTimeLR(o, decay_rate=0.5, decay_steps=3, staircase=True),
                               lambda L, o: L.LambdaLR(o, lambda t: 1 / (1 + 0.5 * (t // 3)))),
    # T_max < STEPS: past T_max the cosine comes back up, in torch too
    "cosine": (lambda o: S.CosineAnnealingLR(o, T_max=37, eta_min=0.001),
               lambda L, o: L.CosineAnnealingLR(o, T_max=37, eta_min=0.001)),
    "linear": (lambda o: S.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=25),
               lambda L, o: L.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=25)),
    "warmup": (lambda o: S.LinearWarmup(o, warmup_steps=10, start_factor=0.1),
               lambda L, o: L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=10)),
    "warmup-then-cosine": (
        lambda o: S.WarmupThen(o, after=S.CosineAnnealingLR(T_max=90), warmup_steps=10, start_factor=0.1),
        lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=10),
                                        L.CosineAnnealingLR(o, T_max=90)], milestones=[10])),
    "warmup-then-step": (
        lambda o: S.WarmupThen(o, after=S.StepLR(step_size=20, gamma=0.5), warmup_steps=5, start_factor=0.2),
        lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.2, total_iters=5),
                                        L.StepLR(o, step_size=20, gamma=0.5)], milestones=[5])),
    "sequential-3": (
        lambda o: S.SequentialLR(o, [S.ConstantLR(factor=0.5, total_iters=100), S.ExponentialLR(gamma=0.9),
                                     S.StepLR(step_size=7, gamma=0.5)], milestones=[20, 50]),
        lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, factor=0.5, total_iters=100),
                                        L.ExponentialLR(o, gamma=0.9), L.StepLR(o, step_size=7, gamma=0.5)],
                                    milestones=[20, 50])),
    "compose": (lambda o: S.Compose(o, S.ExponentialLR(gamma=0.98), S.MultiStepLR(milestones=[30, 60], gamma=0.5)),
                lambda L, o: L.ChainedScheduler([L.ExponentialLR(o, gamma=0.98),
                                                 L.MultiStepLR(o, milestones=[30, 60], gamma=0.5)])),
    "lambda": (lambda o: S.LambdaLR(o, lambda t: 0.5 ** (t / 10)),
               lambda L, o: L.LambdaLR(o, lambda t: 0.5 ** (t / 10))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_torch_for_100_steps(name):
    ours, theirs = CASES[name]
    expected = _run_torch(theirs)
    actual = _run_fastgd(ours)
    # torch's recursive forms (cosine, linear) round differently from the closed forms
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-15, err_msg=name)


def test_constant_keeps_lr():
    assert np.all(_run_fastgd(S.Constant) == np.array(BASES))


def test_binding_sets_t0_value_and_get_last_lr():
    opt = _fastgd_opt()
    sched = S.LinearWarmup(opt, warmup_steps=4, start_factor=0.25)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert sched.get_last_lr() == pytest.approx([0.025, 0.0075])
    for _ in range(10):
        sched.step()
    assert sched.get_last_lr() == pytest.approx(list(BASES))
    assert sched.last_epoch == 10


def test_schedule_drives_fastgd_optimizer():
    # lr 0 after the first step: the parameter must stop moving
    p = np.ones(4)
    opt = fastgd.Adam([p], lr=0.1)
    sched = S.MultiStepLR(opt, milestones=[1], gamma=0.0 + 1e-300)
    opt.step([np.ones(4)])
    sched.step()
    after_first = p.copy()
    opt.step([np.ones(4)])
    np.testing.assert_allclose(p, after_first, atol=1e-250)


def test_values_and_state_dict_roundtrip():
    cos = S.CosineAnnealingLR(T_max=10)
    v = cos.values(21, base_lr=2.0)
    assert v[0] == 2.0 and v[10] == pytest.approx(0.0, abs=1e-15) and v[20] == pytest.approx(2.0)
    opt = _fastgd_opt()
    s = S.ExponentialLR(opt, gamma=0.5)
    for _ in range(3):
        s.step()
    state = s.state_dict()
    opt2 = _fastgd_opt()
    s2 = S.ExponentialLR(opt2, gamma=0.5)
    s2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([b * 0.125 for b in BASES])
    # fastgd's optimizer checkpoint stays loadable: schedules keep their base rates to themselves
    opt2.load_state_dict(opt.state_dict())


def test_compose_is_function_composition():
    c = S.Compose(S.CosineAnnealingLR(T_max=10, eta_min=0.0), S.ExponentialLR(gamma=0.5))
    assert c.lr_at(3, 1.0) == pytest.approx(0.5 ** 3 * (1 + math.cos(math.pi * 0.3)) / 2)


@pytest.mark.parametrize("make, err", [
    (lambda: S.StepLR(step_size=0), ValueError),
    (lambda: S.StepLR(step_size=1.5), TypeError),
    (lambda: S.ExponentialLR(gamma=-0.1), ValueError),
    (lambda: S.ExponentialLR(gamma=float("nan")), ValueError),
    (lambda: S.MultiStepLR(milestones=[5, 3]), ValueError),
    (lambda: S.CosineAnnealingLR(T_max=0), ValueError),
    (lambda: S.LinearLR(start_factor=1.5), ValueError),
    (lambda: S.SequentialLR(schedules=[S.Constant(), S.Constant()], milestones=[]), ValueError),
    (lambda: S.SequentialLR(schedules=[S.Constant(), "cosine"], milestones=[3]), TypeError),
    (lambda: S.WarmupThen(after=None), TypeError),
    (lambda: S.LambdaLR(lr_lambda=3), TypeError),
    (lambda: S.StepLR(object(), step_size=3), TypeError),
    (lambda: S.StepLR(_Groups(-0.1), step_size=3), ValueError),  # negative base lr
])
def test_bad_arguments(make, err):
    with pytest.raises(err):
        make()


class _Groups:
    def __init__(self, lr):
        self.param_groups = [{"lr": lr}]


def test_unbound_step_is_an_error():
    with pytest.raises(RuntimeError, match="not bound"):
        S.StepLR(step_size=2).step()
