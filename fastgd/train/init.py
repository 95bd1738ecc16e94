"""Weight initialisation with torch.nn.init's variances, in place on any float array (a view into a
model's flat buffer), seeded.

Fans follow torch's layout: a weight of shape (out, in, *kernel) has
fan_in = in * prod(kernel) and fan_out = out * prod(kernel).

- Xavier/Glorot (Glorot & Bengio 2010): Var = gain^2 * 2 / (fan_in + fan_out); keeps the variance of
  activations and of gradients roughly constant through layers of tanh/linear units.
- He/Kaiming (He et al. 2015): Var = gain^2 / fan (fan_in or fan_out); the ReLU gain sqrt(2) makes up
  for ReLU zeroing half its inputs.
A uniform U(-a, a) has variance a^2 / 3, hence a = sqrt(3) * std below.
"""
import math
import numbers

import numpy as np

__all__ = ["calculate_gain", "fans", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
           "kaiming_normal_", "normal_", "zeros_", "as_generator"]

_GAINS = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
          "selu": 0.75}


def as_generator(seed):
    """A numpy Generator from None, an int seed, or a Generator (returned as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be None, an int or a numpy.random.Generator; got {type(seed).__name__}")


def calculate_gain(nonlinearity, param=None):
    """The gain torch.nn.init.calculate_gain returns: linear/sigmoid 1, tanh 5/3, relu sqrt(2),
    leaky_relu sqrt(2 / (1 + slope^2)) (slope ``param``, default 0.01), selu 3/4."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope * slope))
    if nonlinearity in ("conv1d", "conv2d", "conv3d"):
        return 1.0
    try:
        return _GAINS[nonlinearity]
    except KeyError:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; known: "
                         f"{sorted(_GAINS) + ['leaky_relu']}") from None


def fans(shape):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), as torch computes them."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan_in and fan_out need a weight with at least 2 dimensions; got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _target(a):
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        raise TypeError("init fills a float numpy array in place")
    if not a.flags.writeable:
        raise ValueError("init fills the array in place; it is read-only")
    return a


def _fill(a, values):
    a[...] = values.astype(a.dtype, copy=False)
    return a


def normal_(a, std=1.0, mean=0.0, seed=None):
    """a ~ N(mean, std^2), in place."""
    _target(a)
    if not (std >= 0):
        raise ValueError(f"std must be >= 0; got {std}")
    return _fill(a, as_generator(seed).normal(mean, std, a.shape))


def zeros_(a):
    """a = 0, in place (biases)."""
    _target(a)[...] = 0
    return a


def xavier_uniform_(a, gain=1.0, seed=None):
    """a ~ U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)); Var = gain^2 * 2 / (fan_in + fan_out)."""
    fan_in, fan_out = fans(_target(a).shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(a, as_generator(seed).uniform(-bound, bound, a.shape))


def xavier_normal_(a, gain=1.0, seed=None):
    """a ~ N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(_target(a).shape)
    return _fill(a, as_generator(seed).normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), a.shape))


def _kaiming_std(a, neg_slope, mode, nonlinearity):
    fan_in, fan_out = fans(_target(a).shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out'; got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, neg_slope) / math.sqrt(fan)


def kaiming_uniform_(a, neg_slope=0.0, mode="fan_in", nonlinearity="leaky_relu", seed=None):
    """a ~ U(-b, b), b = sqrt(3) * gain / sqrt(fan); Var = gain^2 / fan (torch's defaults: gain sqrt(2))."""
    bound = math.sqrt(3.0) * _kaiming_std(a, neg_slope, mode, nonlinearity)
    return _fill(a, as_generator(seed).uniform(-bound, bound, a.shape))


def kaiming_normal_(a, neg_slope=0.0, mode="fan_in", nonlinearity="leaky_relu", seed=None):
    """a ~ N(0, std^2), std = gain / sqrt(fan)."""
    return _fill(a, as_generator(seed).normal(0.0, _kaiming_std(a, neg_slope, mode, nonlinearity), a.shape))
