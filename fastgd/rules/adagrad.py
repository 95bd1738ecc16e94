"""Adagrad (Duchi et al. 2011), as torch.optim.Adagrad."""
from ._spec import Spec, State

SPEC = Spec(
    name="adagrad",
    options=(("lr", 1e-2), ("lr_decay", 0.0), ("weight_decay", 0.0),
             ("initial_accumulator_value", 0.0), ("eps", 1e-10), ("maximize", False)),
    state=(State("sum", init="initial_accumulator_value", arg="state_sum", signed4=False),),
    arrays=lambda s: (s["sum"],),
    constants=lambda o: (),
    scalars=lambda o, t, s, fresh: (o["lr"] / (1.0 + (t - 1) * o["lr_decay"]), o["weight_decay"],
                                    o["eps"]),
    doc="""\
g = grad_scale * grad (negated if maximize);  g += weight_decay * p
sum += g^2;  p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)
sum starts at initial_accumulator_value""",
)
