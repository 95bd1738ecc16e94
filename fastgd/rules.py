"""The one list of update rules that tests, benchmarks and the CLI iterate over.

A rule here is what a user benchmarks or verifies: an optimizer class with the options that
select a variant, its memory traffic, and its peer in torch.optim. Adding an optimizer means
adding its entries here; nothing else lists rules.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    name: str                 # e.g. "adamw", "sgd_momentum"
    optimizer: str            # class name in fastgd (and in torch.optim when torch has it)
    options: dict = field(default_factory=dict)   # constructor options selecting the variant
    bytes_per_element: int = 0    # float32 memory traffic of one step (twice that for float64)
    written: int = 1          # arrays read and written per element (param + state); grad is read only
    torch: str = None         # torch.optim class of the peer, None when torch has none
    torch_fused: bool = False  # torch has a fused CPU kernel for it (else its foreach is the peer)

    def make(self, params, **extra):
        """The fastgd optimizer of this rule over ``params``."""
        import fastgd
        return getattr(fastgd, self.optimizer)(params, **{**self.options, **extra})


RULES = {
    r.name: r
    for r in [
        Rule("adam", "Adam", {}, 28, 3, torch="Adam", torch_fused=True),
        Rule("adamw", "AdamW", {"weight_decay": 1e-2}, 28, 3, torch="AdamW", torch_fused=True),
        Rule("amsgrad", "Adam", {"amsgrad": True}, 36, 4, torch="Adam", torch_fused=True),
        # Global-norm clipping fused into the step: a read-only norm pass (4) + Adam (28). The
        # torch peer is clip_grad_norm_(foreach=True) then the optimizer: a peer that finds
        # "max_grad_norm" in options pops it and clips first (torch.optim has no such option).
        Rule("clip_adam", "Adam", {"max_grad_norm": 1.0}, 32, 3, torch="Adam", torch_fused=True),
    ]
}
