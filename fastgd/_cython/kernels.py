"""Every Cython kernel under one roof: the registry's view of the cython backend."""
from .adagrad import adagrad, adagrad_many  # noqa: F401
from .adam import adam, adam_many  # noqa: F401
from .adamax import adamax, adamax_many  # noqa: F401
from .lion import lion, lion_many  # noqa: F401
from .nadam import nadam, nadam_many  # noqa: F401
from .norms import accumulate, clamp, norm_partial, scale  # noqa: F401
from .radam import radam, radam_many  # noqa: F401
from .rmsprop import rmsprop, rmsprop_many  # noqa: F401
from .runtime import format_paths, get_num_threads, openmp_version, set_num_threads  # noqa: F401
from .sgd import sgd, sgd_many  # noqa: F401
from .runtime import force_serial, forked_serial, parallel_started  # noqa: F401  (fork safety)
from .stream import stream, stream_formats  # noqa: F401
