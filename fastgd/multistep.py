"""MultiSteps: gradient accumulation over k micro-batches, fused into the k-th step (optax.MultiSteps).

    call 1:          acc = grad                                      (8 bytes/element, float32)
    calls 2 .. k-1:  acc += (grad_scale / grad_scale_1) * grad        (12 bytes/element)
    call k:          step with g = grad_scale_1 * (acc + grad) / k, acc = 0  (one fused pass)

The last micro-batch is never added to ``acc`` in a separate pass: the optimizer's kernel reads
``acc`` and the last gradient, steps with their mean and zeroes ``acc`` as it goes (the kernel
contract's ``use_acc``). With the optimizer's ``max_grad_norm`` set, the clipping norm is that of
the mean gradient (its norm pass reads acc + grad too). If that norm is not finite, the step is
skipped (the optimizer counts it in ``skipped_steps``) and the accumulated micro-batches are
discarded, so one bad micro-batch cannot poison the steps after it.
"""
import numpy as np

from . import _validate as check
from .backends import kernel


class MultiSteps:
    """Step ``optimizer`` once every ``every_k`` calls, with the mean of the k gradients.

    ``use_grad_mean=False`` steps with their sum instead (optax's flag of the same name).
    ``step`` returns True on the calls where the optimizer stepped. The wrapped optimizer is
    ``self.optimizer``; ``param_groups`` is its (so schedules work unchanged).
    """

    def __init__(self, optimizer, every_k, *, use_grad_mean=True):
        if isinstance(every_k, bool) or not isinstance(every_k, (int, np.integer)) or every_k < 1:
            raise ValueError(f"every_k must be an int >= 1; got {every_k!r}")
        for name in ("_gather", "_step"):
            if not hasattr(optimizer, name):
                raise TypeError(f"MultiSteps wraps a fastgd optimizer; got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.every_k = int(every_k)
        self.use_grad_mean = check.flag("use_grad_mean", use_grad_mean)
        #: micro-batches accumulated since the last step (0 .. every_k - 1)
        self.mini_step = 0
        #: optimizer steps taken (or skipped for a non-finite norm) through this wrapper
        self.gradient_step = 0
        self._acc = {}        # parameter index -> flat accumulated gradient, in units of _unit
        self._unit = 1.0      # acc holds sum(grad_scale_j * grad_j) / _unit

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, grads=None, *, grad_scale=1.0):
        """Add one micro-batch's gradients; on every ``every_k``-th call, step the optimizer."""
        opt = self.optimizer
        if grad_scale != 1.0:
            grad_scale = check.finite("grad_scale", grad_scale)
        work = opt._gather(opt._flat_grad_list() if grads is None else grads)  # checks all first
        if self.mini_step == 0:
            self._unit = grad_scale if grad_scale != 0.0 else 1.0
        rel = grad_scale / self._unit
        if self.mini_step + 1 < self.every_k:
            add = kernel("accumulate")
            for _, index, p, g in work:
                acc = self._acc.get(index)
                if acc is None:
                    acc = self._acc[index] = np.zeros_like(p)
                if self.mini_step == 0:
                    np.copyto(acc, g)        # acc is zero and rel is 1: a copy, not a read of acc
                else:
                    add(acc, g, rel)
            self.mini_step += 1
            return False
        return self._last(work, rel)

    def _last(self, work, rel):
        """The k-th micro-batch: one fused pass of the optimizer over acc + grad."""
        opt = self.optimizer
        add = kernel("accumulate")
        items, accs, unfused = [], [], []
        for item in work:
            acc = self._acc.get(item[1])
            if rel != 1.0:
                # The last micro-batch has another grad_scale than the first (rare, e.g. a loss
                # scale changed): add it to acc, then step from acc alone.
                if acc is None:
                    acc = self._acc[item[1]] = np.zeros_like(item[2])
                add(acc, item[3], rel)
                items.append(item[:3] + (acc,))
                accs.append(None)
                unfused.append(acc)
            else:
                items.append(item)
                accs.append(acc)
        # Parameters with gradients in earlier micro-batches but none now step from acc alone.
        seen = {item[1] for item in items}
        groups = [g for g in opt.param_groups for _ in g["params"]]
        params = [p for g in opt.param_groups for p in g["params"]]
        for index, acc in self._acc.items():
            if index not in seen:
                items.append((groups[index], index, params[index].reshape(-1), acc))
                accs.append(None)
                unfused.append(acc)
        order = sorted(range(len(items)), key=lambda i: items[i][1])
        items = [items[i] for i in order]
        accs = [accs[i] for i in order]
        n = self.every_k if self.use_grad_mean else 1
        stepped = opt._step(items, self._unit / n, accs if any(a is not None for a in accs) else None)
        # The fused pass zeroed the accumulators it read; the others (all of them after a skipped
        # step: its micro-batches are discarded) are zeroed here.
        for acc in (unfused if stepped else self._acc.values()):
            acc.fill(0)
        self.mini_step = 0
        self.gradient_step += 1
        return stepped

    def state_dict(self):
        """The optimizer's state_dict plus the accumulator (copied)."""
        return {"optimizer": self.optimizer.state_dict(), "mini_step": self.mini_step,
                "gradient_step": self.gradient_step, "unit": self._unit,
                "acc": {i: a.copy() for i, a in self._acc.items()}}

    def load_state_dict(self, state_dict):
        """Restore a snapshot from ``state_dict()``."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        acc = {}
        for i, a in dict(state_dict["acc"]).items():
            a = np.asarray(a)
            if not 0 <= int(i) < len(params) or a.size != params[int(i)].size or a.dtype != params[int(i)].dtype:
                raise ValueError(f"accumulator {i!r} does not match the optimizer's parameters")
            acc[int(i)] = np.array(a, order="C").reshape(-1)
        mini = int(state_dict["mini_step"])
        if not 0 <= mini < self.every_k:
            raise ValueError(f"mini_step {mini} is not in [0, every_k={self.every_k})")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._acc, self.mini_step = acc, mini
        self.gradient_step = int(state_dict["gradient_step"])
        self._unit = float(state_dict["unit"])

    def __repr__(self):
        return f"MultiSteps(every_k={self.every_k}, mini_step={self.mini_step}, {self.optimizer!r})"

