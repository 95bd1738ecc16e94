"""Stochastic gradient descent with momentum (Polyak; Nesterov as Sutskever et al. 2013), as
torch.optim.SGD."""
from .. import _validate as check
from ._spec import Spec, State


def _cross_check(o):
    check.nesterov_momentum(o["nesterov"], o["momentum"], o["dampening"])


SPEC = Spec(
    name="sgd",
    options=(("lr", 1e-3), ("momentum", 0.0), ("dampening", 0.0), ("weight_decay", 0.0),
             ("nesterov", False), ("maximize", False)),
    state=(State("momentum_buffer", when=lambda o: o["momentum"] != 0.0, option="momentum"),),
    # without momentum the kernel never touches the buffer argument: pass the param in its place
    arrays=lambda s: (s.get("momentum_buffer", s["param"]),),
    constants=lambda o: (o["lr"], o["momentum"], o["dampening"], o["weight_decay"], o["nesterov"]),
    # the buffer is set to g at its first step (torch: buf is None until then)
    scalars=lambda o, t, s, fresh: (fresh,),
    cross_check=_cross_check,
    torch_step=False,
    doc="""\
g = grad_scale * grad (negated if maximize);  g += weight_decay * p
momentum > 0: buf = g at its first step, else buf = momentum * buf + (1 - dampening) * g
              g = g + momentum * buf (nesterov) | g = buf
p -= lr * g""",
)
