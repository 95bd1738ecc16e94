"""RAdam (Liu et al. 2020), as torch.optim.RAdam; RAdamW with decoupled_weight_decay=True."""
from ._spec import Spec, State


def rectification(t, beta2):
    """RAdam's variance rectification at step t: (adaptive, rect).

    rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    adaptive = rho_t > 5;  rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    """
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2 ** t / (1.0 - beta2 ** t)
    if rho_t <= 5.0:
        return False, 1.0
    rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
    return True, rect


def _scalars(o, t, s, fresh):
    beta1, beta2 = o["betas"]
    return (1.0 - beta1 ** t, 1.0 - beta2 ** t, *rectification(t, beta2))


SPEC = Spec(
    name="radam",
    options=(("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
             ("decoupled_weight_decay", False), ("maximize", False)),
    state=(State("exp_avg"), State("exp_avg_sq", signed8=False, signed4=False)),
    arrays=lambda s: (s["exp_avg"], s["exp_avg_sq"]),
    constants=lambda o: (o["lr"], *o["betas"], o["eps"], o["weight_decay"],
                         o["decoupled_weight_decay"]),
    scalars=_scalars,
    fixed=("decoupled_weight_decay",),
    doc="""\
g = grad_scale * grad (negated if maximize)
RAdam: g += weight_decay * p;  RAdamW (decoupled_weight_decay): p *= 1 - lr * weight_decay
m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
rho_t > 5: p -= lr * rect_t * m / (1 - beta1^t) * sqrt(1 - beta2^t) / (sqrt(v) + eps)
else:      p -= lr * m / (1 - beta1^t)            (rho_t, rect_t: rectification(t, beta2))""",
)
