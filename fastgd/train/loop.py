"""The training loop: ``fit`` (models on data) and ``minimize`` (a function given its gradient),
both recording the convergence indicators: loss curve, gradient norm, parameter-change norm and,
with validation data, validation loss/accuracy.

A step of ``fit``, for one (micro-)batch group:
    g = grad of the mean batch loss  (with accumulate=k: g = (1/k) sum of k micro-batch grads)
    ||g|| recorded;  clip: c = min(1, max_norm / (||g|| + 1e-6)) (torch.nn.utils.clip_grad_norm_)
    opt.step([g_raw], grad_scale = c / k)
The averaging and the clipping coefficient ride along in the optimizer kernel's ``grad_scale``,
so neither costs an extra pass over the gradient.
"""
import math
import numbers
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .. import functional
from .._validate import FLOAT_DTYPES
from .data import Batches, check_xy

__all__ = ["History", "fit", "minimize", "MinimizeResult", "global_norm"]


def global_norm(*arrays):
    """||(a_1, ..., a_n)||_2 = sqrt(sum_i sum_j a_ij^2) of array-likes, accumulated in float64
    (0.0 for none).

    The norm pass is fastgd.functional.global_norm's deterministic kernel; arrays it does not
    take as they are (other dtypes, or float32 mixed with float64) are converted to float64,
    which changes no value.
    """
    flats = [np.ascontiguousarray(a) for a in arrays]
    dtypes = {a.dtype for a in flats}
    if len(dtypes) > 1 or not dtypes <= set(FLOAT_DTYPES):
        flats = [a.astype(np.float64) for a in flats]
    return functional.global_norm(flats)


@dataclass
class History:
    """What ``fit`` records. Per epoch (one entry each):

    loss        mean training loss over the epoch's batches (weighted by batch size)
    grad_norm   mean over the epoch's steps of ||g|| (before clipping)
    param_change  ||theta_end - theta_start|| over the epoch
    val_loss, val_acc  on ``val_data`` at the epoch's end (val_acc for classifiers)
    lr          the learning rate of param group 0 used in the epoch's last step
    time        seconds since the start of fit

    Per step (with ``per_step=True``): step_loss, step_grad_norm, step_param_change (||delta theta||),
    step_lr. ``stop_reason``: "max_epochs", "converged" (loss change below tol) or "diverged".
    """

    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    param_change: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    time: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)
    step_grad_norm: list = field(default_factory=list)
    step_param_change: list = field(default_factory=list)
    step_lr: list = field(default_factory=list)
    steps: int = 0
    clipped_steps: int = 0
    stop_reason: str = ""

    @property
    def epochs(self):
        return len(self.loss)

    @property
    def converged(self):
        return self.stop_reason == "converged"

    @property
    def diverged(self):
        return self.stop_reason == "diverged"

    def as_dict(self):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(self).items()}

    def summary(self):
        """One line: epochs, final loss (and val metrics), stop reason, time."""
        parts = [f"{self.epochs} epochs", f"{self.steps} steps"]
        if self.loss:
            parts.append(f"loss {self.loss[-1]:.4g}")
        if self.val_loss:
            parts.append(f"val_loss {self.val_loss[-1]:.4g}")
        if self.val_acc:
            parts.append(f"val_acc {self.val_acc[-1]:.4f}")
        if self.time:
            parts.append(f"{self.time[-1]:.2f} s")
        return ", ".join(parts) + f" ({self.stop_reason})"


def _optimizer_over(optimizer, params):
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must be a fastgd optimizer; got {type(optimizer).__name__}")
    mine = [p for g in groups for p in g["params"]]
    if len(mine) != 1 or mine[0] is not params:
        raise ValueError("build the optimizer over the model's flat buffer alone: "
                         "fastgd.Adam([model.params], lr=...)")
    return groups


def _int_at_least(name, value, low, none_ok=False):
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return int(value)


def _own_clipping(opt):
    # An optimizer built with max_grad_norm clips in its own kernel; clipping twice would be a
    # silent surprise (two thresholds), so fit refuses the combination. max_grad_norm is the
    # optimizer's (MultiSteps: its optimizer's), never a param group's.
    inner = getattr(opt, "optimizer", opt)
    return getattr(inner, "max_grad_norm", None) is not None


class _Progress:
    """A rich progress bar when rich is installed and output is a terminal-like stream; plain
    one-line-per-epoch text otherwise (``mode="plain"`` forces it)."""

    def __init__(self, mode, epochs, stream=None):
        self.mode, self.epochs, self._bar = mode, epochs, None
        self.stream = stream or sys.stdout
        if mode is True or mode == "rich":
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                self.mode = "plain"
            else:
                self._bar = Progress(TextColumn("epoch {task.completed}/{task.total}"), BarColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn())
                self._task = self._bar.add_task("", total=epochs)
                self._bar.start()

    def update(self, epoch, hist):
        text = f"loss {hist.loss[-1]:.4g}  |g| {hist.grad_norm[-1]:.3g}"
        if hist.val_loss:
            text += f"  val_loss {hist.val_loss[-1]:.4g}"
        if hist.val_acc:
            text += f"  val_acc {hist.val_acc[-1]:.4f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, description=text)
        elif self.mode:
            print(f"epoch {epoch:>4}/{self.epochs}  {text}", file=self.stream, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.stop()


def fit(model, optimizer, X, y, *, epochs=10, batch_size=None, shuffle=True, seed=0, drop_last=False,
        schedule=None, schedule_unit="epoch", clip_grad_norm=None, accumulate=1, val_data=None,
        tol=None, patience=1, per_step=False, progress=False, callback=None):
    """Train ``model`` with ``optimizer`` (built over ``[model.params]``) and return a :class:`History`.

    batch_size: None = full batch (batch GD), 1 = SGD, b = mini-batch; shuffled each epoch (seeded).
    schedule: a schedule bound to ``optimizer``; stepped after every epoch (``schedule_unit="epoch"``)
        or every optimizer step (``"step"``).
    clip_grad_norm: max global L2 norm of the step's gradient (coefficient fused into the step).
    accumulate: k micro-batches of ``batch_size`` per step, gradients summed into one buffer and
        averaged by the step's grad_scale (1/k): the same step as one batch of k * batch_size.
        A short last group is averaged over the samples it has, so it is still a mean gradient.
    val_data: (X_val, y_val), evaluated at every epoch's end.
    tol: stop when |loss_e - loss_(e-1)| < tol for ``patience`` epochs in a row ("converged").
    A non-finite loss stops training ("diverged"). progress: False, True (rich bar if installed,
    else plain text) or "plain". callback(epoch, history) after each epoch; return True to stop.
    """
    groups = _optimizer_over(optimizer, model.params)
    X, y = check_xy(X, y, name="training data")
    epochs = _int_at_least("epochs", epochs, 1)
    accumulate = _int_at_least("accumulate", accumulate, 1)
    patience = _int_at_least("patience", patience, 1)
    if schedule_unit not in ("epoch", "step"):
        raise ValueError(f"schedule_unit must be 'epoch' or 'step'; got {schedule_unit!r}")
    if schedule is not None and getattr(schedule, "optimizer", None) is not optimizer:
        raise ValueError("the schedule must be bound to the same optimizer: Schedule(optimizer, ...)")
    if clip_grad_norm is not None:
        if isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, numbers.Real) \
                or not (0 < clip_grad_norm < math.inf):
            raise ValueError(f"clip_grad_norm must be a finite number > 0; got {clip_grad_norm!r}")
    if tol is not None and not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0; got {tol!r}")
    # Everything the model would refuse (feature count, labels out of range) fails now, before
    # any step, not after an epoch of work. X is cast to the model's dtype once, not per batch.
    X = model._input(X)
    model._targets(y, X.shape[0])
    if val_data is not None:
        if not (isinstance(val_data, (tuple, list)) and len(val_data) == 2):
            raise TypeError("val_data must be a pair (X_val, y_val)")
        Xv, yv = check_xy(*val_data, name="validation data")
        Xv = model._input(Xv)
        model._targets(yv, Xv.shape[0])
    for g in groups:
        if not (isinstance(g.get("lr"), numbers.Real) and g["lr"] >= 0):
            raise ValueError(f"learning rate must be >= 0; got {g.get('lr')!r}")

    data = Batches(X, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    if clip_grad_norm is not None and _own_clipping(optimizer):
        raise ValueError("the optimizer already clips (max_grad_norm); pass clip_grad_norm to one of them")
    clip = None if clip_grad_norm is None else float(clip_grad_norm)
    acc = np.zeros_like(model.grad) if accumulate > 1 else None
    hist = History()
    bar = _Progress(progress, epochs)
    t0 = time.perf_counter()
    n_batches = len(data)
    streak = 0
    try:
        for epoch in range(1, epochs + 1):
            start = model.params.copy()
            loss_sum, seen, norms = 0.0, 0, []
            pending, weight = 0, 0.0
            for k, (Xb, yb) in enumerate(data):
                loss = model.loss_grad(Xb, yb)
                if not math.isfinite(loss):
                    hist.stop_reason = "diverged"
                    break
                loss_sum += loss * Xb.shape[0]
                seen += Xb.shape[0]
                if acc is None:
                    g, scale = model.grad, 1.0
                else:
                    # weight a short micro-batch by its share of a full one, so the group's
                    # average is the mean gradient over the samples it has
                    w = Xb.shape[0] / data.batch_size
                    if w == 1.0:
                        np.add(acc, model.grad, out=acc)
                    else:
                        acc += w * model.grad
                    pending += 1
                    weight += w
                    if pending < accumulate and k + 1 < n_batches:
                        continue
                    g, scale = acc, 1.0 / weight
                gnorm = scale * global_norm(g)
                norms.append(gnorm)
                if clip is not None and gnorm > clip:
                    scale *= clip / (gnorm + 1e-6)
                    hist.clipped_steps += 1
                before = model.params.copy() if per_step else None
                optimizer.step([g], grad_scale=scale)
                hist.steps += 1
                if acc is not None:
                    acc[:] = 0
                    pending, weight = 0, 0.0
                if per_step:
                    hist.step_loss.append(loss)
                    hist.step_grad_norm.append(gnorm)
                    hist.step_param_change.append(global_norm(model.params - before))
                    hist.step_lr.append(float(groups[0]["lr"]))
                if schedule is not None and schedule_unit == "step":
                    schedule.step()
            diverged = hist.stop_reason == "diverged"
            # a diverged epoch still gets its entries, with the non-finite loss, so the curves
            # show where training blew up
            hist.loss.append(loss if diverged else loss_sum / seen)
            hist.grad_norm.append(float(np.mean(norms)) if norms else float("nan"))
            hist.param_change.append(global_norm(model.params - start))
            hist.lr.append(float(groups[0]["lr"]))
            if diverged:
                hist.time.append(time.perf_counter() - t0)
                break
            if val_data is not None:
                hist.val_loss.append(model.loss(Xv, yv))
                if model.is_classifier:
                    hist.val_acc.append(model.accuracy(Xv, yv))
            if schedule is not None and schedule_unit == "epoch":
                schedule.step()
            hist.time.append(time.perf_counter() - t0)
            bar.update(epoch, hist)
            if not math.isfinite(hist.loss[-1]) or not np.all(np.isfinite(model.params)):
                hist.stop_reason = "diverged"
                break
            if callback is not None and callback(epoch, hist):
                hist.stop_reason = "callback"
                break
            if tol is not None and len(hist.loss) > 1:
                streak = streak + 1 if abs(hist.loss[-1] - hist.loss[-2]) < tol else 0
                if streak >= patience:
                    hist.stop_reason = "converged"
                    break
        else:
            hist.stop_reason = "max_epochs"
    finally:
        bar.close()
    return hist


@dataclass
class MinimizeResult:
    """Result of :func:`minimize` / Newton: the minimiser ``x``, ``iterations`` taken, whether
    ||grad|| <= gtol was reached, and the loss / gradient-norm curves (one entry per iterate)."""

    x: np.ndarray
    iterations: int
    converged: bool
    loss: list
    grad_norm: list
    seconds: float
    method: str = ""


def minimize(fun, grad, optimizer, *, schedule=None, max_iter=10_000, gtol=1e-6):
    """Gradient descent on a function: x <- optimizer step with g = grad(x), until ||grad(x)|| <= gtol.

    ``optimizer`` holds x: build it over one array (``fastgd.SGD([x], lr=0.1)``); x is updated in
    place. ``schedule`` (bound to the optimizer) is stepped once per iteration. Returns a
    :class:`MinimizeResult` whose ``iterations`` counts optimizer steps taken.
    """
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise TypeError(f"optimizer must be a fastgd optimizer; got {type(optimizer).__name__}")
    params = [p for g in groups for p in g["params"]]
    if len(params) != 1:
        raise ValueError("minimize needs an optimizer over exactly one array (x)")
    max_iter = _int_at_least("max_iter", max_iter, 0)
    if not (isinstance(gtol, numbers.Real) and gtol >= 0):
        raise ValueError(f"gtol must be a number >= 0; got {gtol!r}")
    x = params[0]

    def advance(x, g):
        optimizer.step([g])  # x is updated in place
        if schedule is not None:
            schedule.step()
        return x

    return descend(fun, lambda x: np.asarray(grad(x), dtype=x.dtype).reshape(x.shape), x, advance,
                   max_iter=max_iter, gtol=gtol, method=type(optimizer).__name__)


def descend(fun, grad, x, advance, *, max_iter, gtol, method):
    """The iteration of :func:`minimize` and Newton's method: x <- advance(x, g) with g = grad(x)
    (an array), until ||g|| <= gtol (converged), ``max_iter`` steps, or a non-finite ||g||.

    Records f(x) and ||g|| at every iterate; returns a :class:`MinimizeResult`.
    """
    losses, norms = [], []
    t0 = time.perf_counter()
    it, converged = 0, False
    while True:
        g = grad(x)
        gn = global_norm(g)
        losses.append(float(fun(x)))
        norms.append(gn)
        if gn <= gtol:
            converged = True
            break
        if it >= max_iter or not math.isfinite(gn):
            break
        x = advance(x, g)
        it += 1
    return MinimizeResult(x, it, converged, losses, norms, time.perf_counter() - t0, method)
