"""The gradient-descent toolkit around fastgd's fused steps: data, losses, init, models with
hand-written backprop, the ``fit`` loop with convergence indicators, Newton's method, and the
vanishing/exploding-gradient study. NumPy only, no autograd."""
from . import data, init, losses, models, newton, study
from .data import Batches, batches, train_test_split
from .loop import History, MinimizeResult, fit, global_norm, minimize
from .models import MLP, LinearRegression, LogisticRegression, Model, SoftmaxRegression
from .newton import Quadratic, newton_logistic, newton_minimize

__all__ = [
    "Batches", "History", "LinearRegression", "LogisticRegression", "MLP", "MinimizeResult", "Model",
    "Quadratic", "SoftmaxRegression", "batches", "data", "fit", "global_norm", "init", "losses",
    "minimize", "models", "newton", "newton_logistic", "newton_minimize", "study", "train_test_split",
]
