"""What torch.optim.Optimizer wraps every ``step`` in, at a fraction of its cost.

torch wraps each optimizer class's ``step`` (Optimizer._patch_step_function) in
``profile_hook_step``: a profiler range ``Optimizer.step#<class>.step``, the step pre hooks
(global, then the optimizer's; one may return new ``(args, kwargs)``), the step, the profiler's
``_optimizer_step_code`` entry point, then the post hooks (the optimizer's, then global); its
own optimizers add ``@torch.no_grad()``. That cost 25-45 us a step on the Xeon of the
README's call-path section (a dispatched record_function op to enter and one to leave, whether
or not a profiler listens, and the no_grad decorator's context objects): more than the rest of
a one-tensor step.

``lean_step`` does the same in ~1 us: the range is opened only while a profiler is enabled
(with none, torch's record_function records nothing), grad mode is switched by the C call
torch.no_grad makes, and hooks run only if there are any. The function it returns is marked
``hooked``, which is how torch tells a step it has wrapped already, so torch does not wrap it
again. A subclass that defines its own ``step`` is wrapped by torch as usual.
"""
import functools

import torch
from torch.optim import optimizer as _torch_optimizer

# whether a profiler is enabled, asked without dispatching an op; a torch without this
# private call opens the range every step, as torch does
_profiling = getattr(torch._C._autograd, "_profiler_enabled", lambda: True)
_set_grad_enabled = torch._C._set_grad_enabled
_grad_enabled = torch.is_grad_enabled


def _call(self, step, args, kwargs):
    # args holds self, as torch's wrapper passes them to the hooks
    pre = _torch_optimizer._global_optimizer_pre_hooks, self._optimizer_step_pre_hooks
    if pre[0] or pre[1]:
        for hooks in pre:
            for hook in list(hooks.values()):
                result = hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(f"{step} must return None or a tuple of (new_args, "
                                           f"new_kwargs), but got {result}.")
    previous = _grad_enabled()
    _set_grad_enabled(False)
    try:
        out = step(*args, **kwargs)
    finally:
        _set_grad_enabled(previous)
    self._optimizer_step_code()
    post = self._optimizer_step_post_hooks, _torch_optimizer._global_optimizer_post_hooks
    if post[0] or post[1]:
        for hooks in post:
            for hook in list(hooks.values()):
                hook(self, args, kwargs)
    return out


def lean_step(step):
    """``step`` under torch.no_grad with torch.optim's step hooks and profiler range."""
    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        self = args[0]
        if _profiling():
            with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
                return _call(self, step, args, kwargs)
        return _call(self, step, args, kwargs)
    wrapper.hooked = True
    return wrapper
