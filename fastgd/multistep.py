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
from ._core import exclusive
from .backends import kernel


class MultiSteps:
    """Step ``optimizer`` once every ``every_k`` calls, with the mean of the k gradients.

    ``use_grad_mean=False`` steps with their sum instead (optax's flag of the same name).
    ``step`` returns True on the calls where the optimizer stepped. The wrapped optimizer is
    ``self.optimizer``; ``param_groups`` is its (so schedules work unchanged). It is used only
    through its public interface (``param_groups``, ``step(grads, grad_scale=, grad_acc=)``,
    ``skipped_steps``, ``state_dict``), so its checks and its one-thread guard apply.
    """

    def __init__(self, optimizer, every_k, *, use_grad_mean=True):
        if isinstance(every_k, bool) or not isinstance(every_k, (int, np.integer)) or every_k < 1:
            raise ValueError(f"every_k must be an int >= 1; got {every_k!r}")
        if not (callable(getattr(optimizer, "step", None)) and hasattr(optimizer, "param_groups")
                and hasattr(optimizer, "skipped_steps")):
            raise TypeError(f"MultiSteps wraps a fastgd optimizer; got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.every_k = int(every_k)
        self.use_grad_mean = check.flag("use_grad_mean", use_grad_mean)
        #: micro-batches accumulated since the last step (0 .. every_k - 1)
        self.mini_step = 0
        #: optimizer steps taken (or skipped for a non-finite norm) through this wrapper
        self.gradient_step = 0
        self._acc = {}        # parameter index -> accumulated gradient (param's shape), in units of _unit
        self._unit = 1.0      # acc holds sum(grad_scale_j * grad_j) / _unit

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def _params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @exclusive
    def step(self, grads=None, *, grad_scale=1.0):
        """Add one micro-batch's gradients; on every ``every_k``-th call, step the optimizer."""
        if grad_scale != 1.0:
            grad_scale = check.finite("grad_scale", grad_scale)
        params = self._params()
        if grads is None:
            grads = self.optimizer.default_grads() if hasattr(self.optimizer, "default_grads") \
                else None
            if grads is None:
                raise TypeError("step() needs grads")
        if isinstance(grads, np.ndarray):
            raise TypeError("grads must be a list of arrays aligned with the parameters, not one array")
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
        # every gradient checked against its parameter before anything is accumulated
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                gf = check.matching(f"grads[{i}]", g, p)
                acc = self._acc.get(i)
                if acc is not None and np.may_share_memory(acc, gf):
                    raise ValueError(f"grads[{i}] shares memory with the accumulator")
        unit = (grad_scale if grad_scale != 0.0 else 1.0) if self.mini_step == 0 else self._unit
        rel = grad_scale / unit
        if self.mini_step + 1 < self.every_k:
            add = kernel("accumulate")
            for i, (p, g) in enumerate(zip(params, grads)):
                if g is None:
                    continue
                acc = self._acc.get(i)
                if acc is None:
                    # 16-bit params: the micro-batches are summed in float32 and the sum rounded
                    # once, at the last one (a bfloat16 sum would lose a rounding per batch)
                    acc = self._acc[i] = np.zeros(p.shape, np.float32 if p.dtype not in
                                                  check.FLOAT_DTYPES else p.dtype)
                if self.mini_step == 0:
                    acc[...] = g             # acc is zero and rel is 1: a copy, not a read of acc
                elif acc.dtype != p.dtype:
                    acc += np.asarray(g, np.float32) * np.float32(rel)
                else:
                    add(acc.reshape(-1), np.ascontiguousarray(g).reshape(-1), rel)
            self._unit = unit
            self.mini_step += 1
            return False
        return self._last(params, grads, rel, unit)

    def _last(self, params, grads, rel, unit):
        """The k-th micro-batch: one fused pass of the optimizer over acc + grad."""
        opt = self.optimizer
        step_grads, accs, unfused = [], [], []
        for i, g in enumerate(grads):
            acc = self._acc.get(i)
            if acc is not None and acc.dtype != params[i].dtype:
                # a 16-bit param's float32 sum, rounded once to its format, stepped unfused
                total = acc if g is None else acc + np.asarray(g, np.float32) * np.float32(rel)
                step_grads.append(total.astype(params[i].dtype))
                accs.append(None)
                unfused.append(acc)
            elif g is None and acc is not None:
                step_grads.append(acc)       # a gradient in earlier micro-batches only: acc alone
                accs.append(None)
                unfused.append(acc)
            elif acc is not None and rel != 1.0:
                # the last micro-batch has another grad_scale than the first (rare, e.g. a loss
                # scale changed): the step reads acc + rel * g, so fold rel into acc first
                step_grads.append(np.asarray(g) * rel)
                accs.append(acc)
            else:
                step_grads.append(g)
                accs.append(acc)
        n = self.every_k if self.use_grad_mean else 1
        skipped = opt.skipped_steps
        opt.step(step_grads, grad_scale=unit / n,
                 grad_acc=accs if any(a is not None for a in accs) else None)   # raises: nothing changed
        stepped = opt.skipped_steps == skipped
        # The fused pass zeroed the accumulators it read; the others (all of them after a skipped
        # step: its micro-batches are discarded) are zeroed here.
        for acc in (unfused if stepped else self._acc.values()):
            acc.fill(0)
        self.mini_step = 0
        self.gradient_step += 1
        return stepped

    @exclusive
    def state_dict(self):
        """The optimizer's state_dict plus the accumulator (copied)."""
        return {"optimizer": self.optimizer.state_dict(), "mini_step": self.mini_step,
                "gradient_step": self.gradient_step, "unit": self._unit,
                "acc": {i: a.copy() for i, a in self._acc.items()}}

    @exclusive
    def load_state_dict(self, state_dict):
        """Restore a snapshot from ``state_dict()``; checked whole before anything changes."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"optimizer", "mini_step",
                                                                   "gradient_step", "unit", "acc"}:
            raise ValueError("state_dict must be a MultiSteps state_dict (keys optimizer, mini_step, "
                             "gradient_step, unit, acc)")
        params = self._params()
        acc = {}
        for i, a in dict(state_dict["acc"]).items():
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(params):
                raise ValueError(f"accumulator {i!r} names no parameter of the optimizer")
            a = np.asarray(a)
            p = params[int(i)]
            if a.size != p.size or a.dtype != p.dtype:
                raise ValueError(f"accumulator {i!r} does not match the optimizer's parameters")
            acc[int(i)] = np.array(a, order="C").reshape(p.shape)
        mini = state_dict["mini_step"]
        if isinstance(mini, bool) or not isinstance(mini, (int, np.integer)) or not 0 <= mini < self.every_k:
            raise ValueError(f"mini_step {mini!r} is not an int in [0, every_k={self.every_k})")
        gstep = state_dict["gradient_step"]
        if isinstance(gstep, bool) or not isinstance(gstep, (int, np.integer)) or gstep < 0:
            raise ValueError(f"gradient_step {gstep!r} is not an int >= 0")
        unit = check.finite("unit", state_dict["unit"])
        if unit == 0.0:
            raise ValueError("unit must not be 0")
        self.optimizer.load_state_dict(state_dict["optimizer"])   # checked whole before it changes
        self._acc, self.mini_step = acc, int(mini)
        self.gradient_step = int(gstep)
        self._unit = unit

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_busy", None)
        return state

    def __repr__(self):
        return f"MultiSteps(every_k={self.every_k}, mini_step={self.mini_step}, {self.optimizer!r})"
