"""fastgd: gradient-descent optimizer steps at the speed of memory, on the CPU, from Python."""
from . import functional, schedules, train
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
from .optim import (SGD, SGD8bit, Adagrad, Adagrad8bit, Adam, Adam4bit, Adam8bit, Adamax, AdamW,
                    AdamW4bit, AdamW8bit, Lion, Lion8bit, NAdam, Optimizer, RAdam, RMSprop,
                    RMSprop8bit)

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adagrad", "Adam", "Adamax", "AdamW", "Lion", "NAdam", "Optimizer", "RAdam", "RMSprop",
    "Adam8bit", "AdamW8bit", "SGD8bit", "Lion8bit", "RMSprop8bit", "Adagrad8bit", "AdamW4bit",
    "Adam4bit",
    "FlatParams", "MultiSteps", "BackendUnavailable", "available_backends", "backend_status",
    "functional", "get_backend", "get_num_threads", "schedules", "set_backend", "set_num_threads",
    "train", "use_backend",
]
