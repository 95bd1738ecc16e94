"""Global-norm clipping, in one module: the norm, the coefficient, and the non-finite policy.

    total = ||g||_p over every gradient of the step together (p = norm_type; inf: max |g|)
    coef  = min(1, max_norm / (total + 1e-6))          (torch.nn.utils.clip_grad_norm_)

Inside a step the coefficient is folded into the kernel's ``grad_scale``: the gradients are read
once by the norm pass and once by the update, and never rewritten. A non-finite total skips the
step and counts it (torch's GradScaler, optax's apply_if_finite); ``error_if_nonfinite=True``
raises instead; nothing changes either way. ``max_norm=inf`` measures without clipping. Every
front end (fastgd.optim, fastgd.torch, MultiSteps, fastgd.functional) uses this module.

Norms are deterministic: each array's partial sum comes from the kernel ``norm_partial`` (fixed
blocks in a fixed order, float32 accumulated in float64), and the partials are added in list
order, so the result is the same bits at any thread count.
"""
import math

import numpy as np

from . import _validate as check
from .backends import kernel


def combine(partials, p):
    """The p-norm from per-array partials (kernel norm_partial), summed in list order."""
    if p == math.inf:
        total = 0.0
        for s in partials:
            if s != s:
                return math.nan
            total = max(total, s)
        return total
    total = 0.0
    for s in partials:
        total += s
    if p == 2.0:
        return math.sqrt(total)
    if p == 1.0:
        return total
    try:
        return total ** (1.0 / p)
    except OverflowError:   # a finite sum whose root overflows (p < 1): the norm is inf, as in
        return math.inf     # torch (float ** raises where the array operation gives inf)


def total_norm(xs, ys, p):
    """p-norm over all of ``xs`` (flat views), with ``ys[i]`` added to ``xs[i]`` where ``ys`` is
    given and ``ys[i]`` is not None (an accumulated gradient plus the last micro-batch)."""
    partial = kernel("norm_partial")
    if ys is None:
        return combine([partial(w, w, False, p) for w in map(_wide, xs)], p)
    return combine([partial(_wide(x), _wide(x) if y is None else _wide(y), y is not None, p)
                    for x, y in zip(xs, ys)], p)


def _wide(x):
    """A 16-bit gradient as float32 (exact; the norm kernels take float32/float64, and the
    update adds a 16-bit grad_acc and grad in float32 too): a copy, for 16-bit grads only."""
    return x if x.dtype.itemsize >= 4 else x.astype(np.float32)


def coefficient(total, max_norm):
    """torch's clipping coefficient: min(1, max_norm / (total + 1e-6)) (NaN stays NaN)."""
    coef = max_norm / (total + 1e-6)
    return coef if not coef >= 1.0 else 1.0


def nonfinite_error(total, p):
    return RuntimeError(f"the total gradient norm of order {p} is non-finite ({total}); step not "
                        "taken, nothing changed (error_if_nonfinite=True; False skips the step "
                        "and counts it in skipped_steps)")


class Clipping:
    """The clipping options of an optimizer (checked on every assignment) and its policy.

    ``max_grad_norm`` (None: no norm pass), ``norm_type`` (p > 0 or inf), ``error_if_nonfinite``;
    ``last_grad_norm``: the total norm of the last step that measured one (of the gradient as
    the update sees it, grad_scale included); ``skipped_steps``: steps skipped for a
    non-finite norm.
    """

    def _init_clipping(self, max_grad_norm, norm_type, error_if_nonfinite):
        # checked all before any is set, so a refused constructor leaves nothing half-set
        values = (None if max_grad_norm is None else check.max_norm("max_grad_norm", max_grad_norm),
                  check.norm_type(norm_type), check.flag("error_if_nonfinite", error_if_nonfinite))
        self._max_grad_norm, self._norm_type, self._error_if_nonfinite = values
        self.last_grad_norm = None
        self.skipped_steps = 0

    @property
    def max_grad_norm(self):
        """Clip the global gradient norm to this inside the step (None: no norm pass; inf:
        measure without clipping)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._max_grad_norm = None if value is None else check.max_norm("max_grad_norm", value)

    @property
    def norm_type(self):
        """p of the clipping norm (> 0, or inf)."""
        return self._norm_type

    @norm_type.setter
    def norm_type(self, value):
        self._norm_type = check.norm_type(value)

    @property
    def error_if_nonfinite(self):
        """Raise RuntimeError (instead of skipping the step) on a non-finite gradient norm."""
        return self._error_if_nonfinite

    @error_if_nonfinite.setter
    def error_if_nonfinite(self, value):
        self._error_if_nonfinite = check.flag("error_if_nonfinite", value)

    def _clipped_scale(self, grads, accs, grad_scale):
        """The grad_scale of a step over flat ``grads`` (plus ``accs[i]`` where given) after
        clipping, or None when the step is to be skipped (counted); raises on a non-finite norm
        with error_if_nonfinite. Call before any write."""
        if self._max_grad_norm is None:
            return grad_scale
        total = total_norm(grads, accs, self._norm_type) * abs(grad_scale)
        self.last_grad_norm = total
        if not math.isfinite(total):
            if self._error_if_nonfinite:
                raise nonfinite_error(total, self._norm_type)
            self.skipped_steps += 1
            return None
        return grad_scale * coefficient(total, self._max_grad_norm)
