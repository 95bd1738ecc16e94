"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"); torch has none."""
from ._spec import Spec, State

SPEC = Spec(
    name="lion",
    options=(("lr", 1e-4), ("betas", (0.9, 0.99)), ("weight_decay", 0.0), ("maximize", False)),
    state=(State("exp_avg"),),
    arrays=lambda s: (s["exp_avg"],),
    constants=lambda o: (o["lr"], *o["betas"], o["weight_decay"]),
    torch_step=False,
    doc="""\
g = grad_scale * grad (negated if maximize)
c = beta1 * m + (1 - beta1) * g;  p = p * (1 - lr * weight_decay) - lr * sign(c)
m = beta2 * m + (1 - beta2) * g          (state: exp_avg = m)
Lion's useful lr is 3-10x smaller than AdamW's and its weight_decay 3-10x larger (the paper's
advice), since every coordinate moves by exactly lr.""",
)
