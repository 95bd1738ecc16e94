"""Learning-rate schedules that set ``lr`` in an optimizer's param groups, as torch.optim.lr_scheduler.

Every schedule is a closed-form rule ``lr_at(t, base_lr)`` of the step count ``t`` (0-based: the
value before the first ``step()``) and the group's base learning rate. Closed forms, not torch's
recursive "chainable" updates, so a schedule has no hidden state beyond ``t``, can be evaluated at
any step (plots, checkpoints), and composes by plain function composition. Where torch has the
same schedule the values equal torch's step for step (tests/test_schedules.py).

Usage, as with torch::

    opt = fastgd.Adam([w], lr=0.1)
    sched = fastgd.schedules.CosineAnnealingLR(opt, T_max=100)
    for epoch in range(100):
        ...; opt.step([g]); sched.step()

Binding (passing an optimizer) records each group's current ``lr`` as its base and sets the
``t = 0`` value at once (torch does the same). ``optimizer=None`` gives an unbound rule, the form
used inside :class:`SequentialLR`, :class:`WarmupThen` and :class:`Compose`.
Any object with a ``param_groups`` list of dicts with an ``"lr"`` works (fastgd or torch).
"""
import bisect
import math
import numbers

__all__ = [
    "Schedule", "Constant", "ConstantLR", "StepLR", "MultiStepLR", "ExponentialLR", "InverseTimeLR",
    "CosineAnnealingLR", "LinearLR", "LinearWarmup", "SequentialLR", "WarmupThen", "Compose",
    "LambdaLR",
]


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _real(name, value, *, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}; got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}; got {value}")
    return value


class Schedule:
    """Base: a rule ``lr_at(t, base_lr)``, optionally bound to an optimizer.

    Bound: ``step()`` advances ``t`` by one and writes ``lr_at(t, base_lr)`` into every param
    group; ``get_last_lr()`` returns what was written last. ``last_epoch`` is ``t``, as in torch.
    """

    def __init__(self, optimizer=None):
        self.optimizer = optimizer
        self.last_epoch = 0
        self.base_lrs = []
        self._last_lr = []
        if optimizer is not None:
            groups = getattr(optimizer, "param_groups", None)
            if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
                raise TypeError("optimizer must have a param_groups list of dicts with an 'lr' "
                                f"(a fastgd or torch optimizer); got {type(optimizer).__name__}")
            self.base_lrs = [_real(f"param_groups[{i}]['lr']", float(g["lr"]), low=0.0)
                             for i, g in enumerate(groups)]
            self._apply()

    def lr_at(self, t, base_lr):
        """The learning rate at step ``t`` (0-based) for a group whose base rate is ``base_lr``."""
        raise NotImplementedError

    def step(self):
        """Advance one step (one epoch or one batch, as the caller chooses) and set each group's lr."""
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to an optimizer; pass one to use step()")
        self.last_epoch += 1
        self._apply()

    def _apply(self):
        self._last_lr = [self.lr_at(self.last_epoch, base) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self):
        """The learning rates last written, one per param group."""
        return list(self._last_lr)

    def values(self, steps, base_lr=1.0):
        """``[lr_at(t, base_lr) for t in range(steps)]``: the curve, for plots and tests."""
        return [self.lr_at(t, base_lr) for t in range(_int("steps", steps, 0))]

    def state_dict(self):
        """``{"last_epoch": t, "base_lrs": [...]}``."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        """Restore ``t`` and the base rates (and set the lr they give, when bound)."""
        t = _int("last_epoch", state["last_epoch"], 0)
        bases = [_real("base_lrs[i]", b, low=0.0) for b in state["base_lrs"]]
        self.last_epoch, self.base_lrs = t, bases
        if self.optimizer is not None:
            self._apply()

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if k not in ("optimizer", "last_epoch", "base_lrs", "_last_lr"))
        return f"{type(self).__name__}({opts})"


class Constant(Schedule):
    """lr(t) = base_lr: the learning rate never changes."""

    def lr_at(self, t, base_lr):
        return base_lr


class ConstantLR(Schedule):
    """lr(t) = base_lr * factor for t < total_iters, then base_lr (torch.optim.lr_scheduler.ConstantLR)."""

    def __init__(self, optimizer=None, factor=1.0 / 3, total_iters=5):
        self.factor = _real("factor", factor, low=0.0, high=1.0)
        self.total_iters = _int("total_iters", total_iters, 0)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * self.factor if t < self.total_iters else base_lr


class StepLR(Schedule):
    """lr(t) = base_lr * gamma^floor(t / step_size) (torch StepLR)."""

    def __init__(self, optimizer=None, step_size=1, gamma=0.1):
        self.step_size = _int("step_size", step_size, 1)
        self.gamma = _real("gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** (t // self.step_size)


class MultiStepLR(Schedule):
    """lr(t) = base_lr * gamma^(number of milestones <= t) (torch MultiStepLR)."""

    def __init__(self, optimizer=None, milestones=(), gamma=0.1):
        ms = [_int("milestones[i]", m, 0) for m in milestones]
        if ms != sorted(ms):
            raise ValueError(f"milestones must be increasing; got {ms}")
        self.milestones = ms
        self.gamma = _real("gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


class ExponentialLR(Schedule):
    """lr(t) = base_lr * gamma^t (torch ExponentialLR)."""

    def __init__(self, optimizer=None, gamma=0.99):
        self.gamma = _real("gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** t


class InverseTimeLR(Schedule):
    """lr(t) = base_lr / (1 + decay_rate * t / decay_steps), t / decay_steps floored if staircase.

    The classic 1/t decay of stochastic approximation (Robbins-Monro), Keras's InverseTimeDecay.
    torch has no class for it (it equals LambdaLR with that factor).
    """

    def __init__(self, optimizer=None, decay_rate=1.0, decay_steps=1, staircase=False):
        self.decay_rate = _real("decay_rate", decay_rate, low=0.0)
        self.decay_steps = _int("decay_steps", decay_steps, 1)
        self.staircase = bool(staircase)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        k = t // self.decay_steps if self.staircase else t / self.decay_steps
        return base_lr / (1.0 + self.decay_rate * k)


class CosineAnnealingLR(Schedule):
    """lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2 (torch CosineAnnealingLR).

    Past T_max the cosine rises again (period 2*T_max), as torch's does.
    """

    def __init__(self, optimizer=None, T_max=100, eta_min=0.0):
        self.T_max = _int("T_max", T_max, 1)
        self.eta_min = _real("eta_min", eta_min, low=0.0)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0


class LinearLR(Schedule):
    """lr(t) = base_lr * (start + (end - start) * min(t, total_iters) / total_iters) (torch LinearLR)."""

    def __init__(self, optimizer=None, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        # torch refuses start_factor 0 (its recursive form divides by it); the closed form need not.
        self.start_factor = _real("start_factor", start_factor, low=0.0, high=1.0)
        self.end_factor = _real("end_factor", end_factor, low=0.0, high=1.0)
        self.total_iters = _int("total_iters", total_iters, 1)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        frac = min(t, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class LinearWarmup(LinearLR):
    """Linear warmup: lr(t) = base_lr * (s + (1 - s) * min(t, warmup_steps) / warmup_steps), s = start_factor.

    LinearLR ending at the base rate; the usual start of transformer training.
    """

    def __init__(self, optimizer=None, warmup_steps=5, start_factor=0.01):
        super().__init__(optimizer, start_factor=start_factor, end_factor=1.0,
                         total_iters=_int("warmup_steps", warmup_steps, 1))


def _rule(schedule, name):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{name} must be a fastgd schedule; got {type(schedule).__name__}")
    return schedule


class SequentialLR(Schedule):
    """Schedules one after another (torch SequentialLR).

    With milestones m_1 < m_2 < ...: schedule i runs from m_i (m_0 = 0), restarted at its own t = 0:
    lr(t) = schedules[i].lr_at(t - m_i, base_lr), i = number of milestones <= t.
    """

    def __init__(self, optimizer=None, schedules=(), milestones=()):
        self.schedules = [_rule(s, f"schedules[{i}]") for i, s in enumerate(schedules)]
        ms = [_int("milestones[i]", m, 1) for m in milestones]
        if not self.schedules:
            raise ValueError("SequentialLR needs at least one schedule")
        if len(ms) != len(self.schedules) - 1:
            raise ValueError(f"SequentialLR needs len(schedules) - 1 = {len(self.schedules) - 1} "
                             f"milestones; got {len(ms)}")
        if ms != sorted(ms) or len(set(ms)) != len(ms):
            raise ValueError(f"milestones must be strictly increasing; got {ms}")
        self.milestones = ms
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        i = bisect.bisect_right(self.milestones, t)
        start = self.milestones[i - 1] if i else 0
        return self.schedules[i].lr_at(t - start, base_lr)


class WarmupThen(SequentialLR):
    """Linear warmup for ``warmup_steps`` steps, then ``after`` from its own t = 0.

    lr(t) = base_lr * (s + (1 - s) * t / W) for t < W, else after.lr_at(t - W, base_lr)
    (W = warmup_steps, s = start_factor). Equals torch SequentialLR([LinearLR, after], [W]).
    """

    def __init__(self, optimizer=None, after=None, warmup_steps=5, start_factor=0.01):
        if after is None:
            raise TypeError("WarmupThen needs the schedule to follow the warmup: after=...")
        warm = LinearWarmup(None, warmup_steps=warmup_steps, start_factor=start_factor)
        super().__init__(optimizer, [warm, after], [warm.total_iters])


class Compose(Schedule):
    """Composition: each schedule's output is the next one's base rate.

    lr(t) = s_k.lr_at(t, ... s_2.lr_at(t, s_1.lr_at(t, base_lr)) ...). For multiplicative schedules
    (everything here except CosineAnnealingLR with eta_min > 0) this is the product of their
    factors, which is what torch's ChainedScheduler gives.
    """

    def __init__(self, optimizer=None, *schedules):
        if isinstance(optimizer, Schedule):  # Compose(s1, s2, ...) without an optimizer
            schedules, optimizer = (optimizer, *schedules), None
        self.schedules = [_rule(s, f"schedules[{i}]") for i, s in enumerate(schedules)]
        if not self.schedules:
            raise ValueError("Compose needs at least one schedule")
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        for s in self.schedules:
            base_lr = s.lr_at(t, base_lr)
        return base_lr


class LambdaLR(Schedule):
    """lr(t) = base_lr * lr_lambda(t) (torch LambdaLR)."""

    def __init__(self, optimizer=None, lr_lambda=None):
        if not callable(lr_lambda):
            raise TypeError("lr_lambda must be callable: t -> factor")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * float(self.lr_lambda(t))
