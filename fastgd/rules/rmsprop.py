"""RMSprop (Hinton 2012; centered: Graves 2013), as torch.optim.RMSprop."""
from ._spec import Spec, State

SPEC = Spec(
    name="rmsprop",
    options=(("lr", 1e-2), ("alpha", 0.99), ("eps", 1e-8), ("weight_decay", 0.0),
             ("momentum", 0.0), ("centered", False), ("maximize", False)),
    state=(State("square_avg", signed4=False),
           State("momentum_buffer", when=lambda o: o["momentum"] > 0.0, option="momentum"),
           State("grad_avg", when="centered")),
    # unused arrays (no momentum, not centered): square_avg in their place, never touched
    arrays=lambda s: (s["square_avg"], s.get("momentum_buffer", s["square_avg"]),
                      s.get("grad_avg", s["square_avg"])),
    constants=lambda o: (o["lr"], o["alpha"], o["eps"], o["weight_decay"], o["momentum"],
                         o["centered"]),
    doc="""\
g = grad_scale * grad (negated if maximize);  g += weight_decay * p
sq = alpha * sq + (1 - alpha) * g^2
centered: ga = alpha * ga + (1 - alpha) * g;  d = sqrt(sq - ga^2) + eps;  else d = sqrt(sq) + eps
momentum > 0: buf = momentum * buf + g / d;  p -= lr * buf;  else p -= lr * g / d
(state: square_avg = sq, grad_avg = ga, momentum_buffer = buf)""",
)
