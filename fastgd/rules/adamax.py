"""Adamax (Kingma & Ba 2015, section 7), as torch.optim.Adamax."""
from ._spec import Spec, State

SPEC = Spec(
    name="adamax",
    options=(("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
             ("maximize", False)),
    state=(State("exp_avg"), State("exp_inf", signed8=False, signed4=False)),
    arrays=lambda s: (s["exp_avg"], s["exp_inf"]),
    constants=lambda o: (o["lr"], *o["betas"], o["eps"], o["weight_decay"]),
    scalars=lambda o, t, s, fresh: (1.0 - o["betas"][0] ** t,),
    doc="""\
g = grad_scale * grad (negated if maximize);  g += weight_decay * p
m = beta1 * m + (1 - beta1) * g;  u = max(beta2 * u, |g| + eps)
p -= lr / (1 - beta1^t) * m / u          (state: exp_avg = m, exp_inf = u)""",
)
