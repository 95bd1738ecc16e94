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
from .optim import Adam, AdamW, Optimizer

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "BackendUnavailable", "Optimizer", "available_backends", "backend_status",
    "functional", "get_backend", "get_num_threads", "set_backend", "set_num_threads", "use_backend",
]

# The optimizer family (issue 4)
from .optim import SGD, Adagrad, Adamax, Lion, NAdam, RAdam, RMSprop  # noqa: E402

__all__ += ["Adagrad", "Adamax", "Lion", "NAdam", "RAdam", "RMSprop", "SGD"]
