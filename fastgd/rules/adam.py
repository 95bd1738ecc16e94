"""Adam (Kingma & Ba 2015), AdamW (Loshchilov & Hutter 2019) and AMSGrad, as torch.optim.Adam."""
from ._spec import Spec, State

SPEC = Spec(
    name="adam",
    options=(("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
             ("amsgrad", False), ("maximize", False), ("decoupled_weight_decay", False)),
    state=(State("exp_avg"), State("exp_avg_sq", signed8=False, signed4=False),
           State("max_exp_avg_sq", when="amsgrad", signed8=False, signed4=False)),
    # without amsgrad the kernel never touches its vmax argument: pass v in its place
    arrays=lambda s: (s["exp_avg"], s["exp_avg_sq"], s.get("max_exp_avg_sq", s["exp_avg_sq"])),
    constants=lambda o: (o["lr"], *o["betas"], o["eps"], o["weight_decay"],
                         o["decoupled_weight_decay"], o["amsgrad"]),
    scalars=lambda o, t, s, fresh: (1.0 - o["betas"][0] ** t, 1.0 - o["betas"][1] ** t),
    fixed=("decoupled_weight_decay",),
    doc="""\
g = grad_scale * grad (negated if maximize)
Adam: g += weight_decay * p;  AdamW (decoupled_weight_decay): p *= 1 - lr * weight_decay
m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
amsgrad: vmax = max(vmax, v), used for v below
p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)""",
)
