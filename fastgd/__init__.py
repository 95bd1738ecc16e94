"""fastgd: gradient-descent optimizer steps at the speed of memory, on the CPU, from Python."""
from . import functional
from .backends import (
    BackendUnavailable,
    available_backends,
    backend_status,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from .flat import FlatParams
from .multistep import MultiSteps
from .optim import Adam, AdamW, Optimizer

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "BackendUnavailable", "FlatParams", "MultiSteps", "Optimizer", "available_backends",
    "backend_status", "functional", "get_backend", "get_num_threads", "set_backend", "set_num_threads", "use_backend",
]
from . import schedules, train  # noqa: E402  (the gradient-descent toolkit)
