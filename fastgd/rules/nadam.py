"""NAdam (Dozat 2016) with torch's momentum decay; NAdamW with decoupled_weight_decay=True."""
from .. import _validate as check
from ._spec import Spec, State


def coefficients(t, mu_product, lr, beta1, momentum_decay):
    """NAdam's step scalars: (grad_coef, avg_coef, new mu_product), as torch.optim.NAdam.

    mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));  mu_product' = mu_product * mu_t
    grad_coef = lr * (1 - mu_t) / (1 - mu_product');  avg_coef = lr * mu_{t+1} / (1 - mu_product' * mu_{t+1})

    The product mu_product * mu_t is taken in mu_product's own type: a Python float (float64)
    in fastgd.optim and fastgd.functional, a numpy.float32 in fastgd.torch, which so rounds it
    every step as torch does with its float32 tensor; the rest is float64 in both.
    """
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    mu_product = mu_product * mu
    mp = float(mu_product)
    return lr * (1.0 - mu) / (1.0 - mp), lr * mu_next / (1.0 - mp * mu_next), mu_product


def _scalars(o, t, s, fresh):
    grad_coef, avg_coef, s["mu_product"] = coefficients(t, s["mu_product"], o["lr"],
                                                        o["betas"][0], o["momentum_decay"])
    return grad_coef, avg_coef, 1.0 - o["betas"][1] ** t


SPEC = Spec(
    name="nadam",
    options=(("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
             ("momentum_decay", 4e-3), ("decoupled_weight_decay", False), ("maximize", False)),
    state=(State("exp_avg"), State("exp_avg_sq", signed8=False, signed4=False)),
    scalar_state=(("mu_product", 1.0, check.fraction),),
    arrays=lambda s: (s["exp_avg"], s["exp_avg_sq"]),
    constants=lambda o: (o["lr"], *o["betas"], o["eps"], o["weight_decay"],
                         o["decoupled_weight_decay"]),
    scalars=_scalars,
    fixed=("decoupled_weight_decay",),
    doc="""\
mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));  mu_product = mu_1 ... mu_t (state)
g = grad_scale * grad (negated if maximize)
NAdam: g += weight_decay * p;  NAdamW (decoupled_weight_decay): p *= 1 - lr * weight_decay
m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2;  d = sqrt(v / (1 - beta2^t)) + eps
p -= lr * (1 - mu_t) / (1 - mu_1..mu_t) * g / d + lr * mu_{t+1} / (1 - mu_1..mu_{t+1}) * m / d""",
)
