"""``fastgd demo quadratic | digits | explode [--plot FILE.png]``: gradient descent, shown.

quadratic  minimise (theta - 3)^2 from theta = 0 with GD, momentum, RMSprop, Adam and Newton;
           then logistic regression by gradient descent against Newton (iterations and time).
digits     scikit-learn's bundled 8x8 digits (no download): mini-batch Adam on softmax regression
           and on an MLP, per-epoch loss and test accuracy (the MLP reaches >= 95% in seconds).
explode    the vanishing/exploding-gradient study: per-layer gradient norms of a deep MLP under
           too-small, too-large, Xavier and He init; SGD training with and without clipping.

Also ``python -m fastgd.demo quadratic``. Optional dependencies (scikit-learn for digits,
matplotlib for --plot) come with ``pip install fastgd[demo]``.
"""
import argparse
import sys
import time

import numpy as np

EXTRA = "pip install fastgd[demo]"


class MissingDependency(Exception):
    """An optional package a demo needs is not installed."""


def _require(module, purpose):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise MissingDependency(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                                f"{EXTRA}") from None


def _plt():
    matplotlib = _require("matplotlib", "--plot")
    matplotlib.use("Agg")  # files only: no display needed
    return _require("matplotlib.pyplot", "--plot")


def _optimizer(name):
    import fastgd
    return getattr(fastgd, name, None)


# --- quadratic -----------------------------------------------------------------------------------

#: (label, optimizer class name, options): the step sizes of the seed text (lr 0.1)
QUADRATIC_METHODS = (
    ("gradient descent", "SGD", {"lr": 0.1}),
    ("momentum", "SGD", {"lr": 0.1, "momentum": 0.5}),
    ("RMSprop", "RMSprop", {"lr": 0.1}),
    ("Adam", "Adam", {"lr": 0.1}),
)


def run_quadratic(gtol=1e-6, max_iter=10_000):
    """Minimise (theta - 3)^2 from 0 with each method until |f'(theta)| <= gtol.

    Returns {label: MinimizeResult or None (optimizer not in this build)}.
    """
    from .train import Quadratic, minimize
    from .train.newton import newton_minimize
    q = Quadratic([[2.0]], [6.0], 9.0)  # (theta - 3)^2 = theta^2 - 6 theta + 9
    results = {}
    for label, cls_name, options in QUADRATIC_METHODS:
        cls = _optimizer(cls_name)
        if cls is None:
            results[label] = None
            continue
        theta = np.zeros(1)
        results[label] = minimize(q, q.grad, cls([theta], **options), max_iter=max_iter, gtol=gtol)
    results["Newton"] = newton_minimize(q, q.grad, q.hess, np.zeros(1), gtol=gtol)
    return results


def run_logistic_comparison(n=2000, d=20, seed=0, gtol=1e-6):
    """Logistic regression on noisy synthetic data: full-batch GD (lr = 4 / lambda_max, the 1/L step
    for the BCE Hessian bound X^T X / (4 n)) against Newton. Returns {label: MinimizeResult}."""
    from .train import LogisticRegression, minimize, newton_logistic
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ rng.standard_normal(d))))).astype(np.float64)
    out = {}
    newton_logistic(X[:50], y[:50], l2=1e-2)  # warm-up: the first LAPACK call pays a one-off cost
    out["Newton"] = newton_logistic(X, y, l2=0.0, gtol=gtol)
    X1 = np.hstack([X, np.ones((n, 1))])
    lam = float(np.linalg.eigvalsh(X1.T @ X1 / n).max())
    for label, options in (("gradient descent", {}), ("GD + momentum 0.9", {"momentum": 0.9})):
        cls = _optimizer("SGD")
        if cls is None:
            out[label] = None
            continue
        model = LogisticRegression(d)

        def grad(_, model=model):
            model.loss_grad(X, y)
            return model.grad

        opt = cls([model.params], lr=4.0 / lam, **options)
        out[label] = minimize(lambda _, model=model: model.loss(X, y), grad, opt, max_iter=100_000, gtol=gtol)
    return out


def demo_quadratic(plot=None, out=None):
    out = out or sys.stdout  # looked up at call time (redirections, capture)
    print("Minimise f(theta) = (theta - 3)^2 from theta = 0; stop when |f'(theta)| <= 1e-6", file=out)
    results = run_quadratic()
    print(f"  {'method':<18} {'iterations':>10} {'final theta':>20}", file=out)
    for label, r in results.items():
        if r is None:
            print(f"  {label:<18} {'skipped: optimizer not in this build':>31}", file=out)
        else:
            flag = "" if r.converged else "  (not converged)"
            print(f"  {label:<18} {r.iterations:>10} {float(r.x[0]):>20.12f}{flag}", file=out)
    print("\nLogistic regression (2000 samples, 20 features): gradient descent against Newton's method,"
          "\nuntil ||grad|| <= 1e-6 (Newton: a (d+1) x (d+1) Hessian solve per iteration)", file=out)
    logistic = run_logistic_comparison()
    print(f"  {'method':<18} {'iterations':>10} {'time (ms)':>10} {'final loss':>14}", file=out)
    for label, r in logistic.items():
        if r is None:
            print(f"  {label:<18} skipped: optimizer not in this build", file=out)
        else:
            print(f"  {label:<18} {r.iterations:>10} {1e3 * r.seconds:>10.1f} {r.loss[-1]:>14.10f}", file=out)
    if plot:
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, r in results.items():
            if r is not None:
                axes[0].semilogy(np.maximum(r.loss, 1e-30), label=label, marker="." if len(r.loss) < 5 else None)
                axes[1].semilogy(np.maximum(r.grad_norm, 1e-30), label=label)
        axes[0].set(title="(theta - 3)^2", xlabel="iteration", ylabel="loss")
        axes[1].set(title="gradient norm", xlabel="iteration", ylabel="|f'(theta)|")
        axes[0].legend()
        _save(fig, plot, out)
    return 0


# --- digits --------------------------------------------------------------------------------------

def load_digits_split(seed=0):
    """scikit-learn's bundled digits (1797 8x8 images, pixels 0..16 scaled to [0, 1]), split 75/25
    stratified by class. Raises MissingDependency without scikit-learn."""
    datasets = _require("sklearn.datasets", "the digits demo")
    from .train import train_test_split
    d = datasets.load_digits()
    return train_test_split(d.data / 16.0, d.target, 0.25, seed=seed, stratify=True)


def train_digits(model_name, epochs, *, seed=0, data=None, progress=False, lr=None):
    """Mini-batch (32) Adam on the digits. ``model_name``: "softmax" (softmax regression) or "mlp"
    (64-64-10 relu). Returns (model, History)."""
    import fastgd
    from .train import MLP, SoftmaxRegression, fit
    Xtr, Xte, ytr, yte = data if data is not None else load_digits_split(seed)
    if model_name == "softmax":
        model, lr = SoftmaxRegression(64, 10), lr or 1e-2
    elif model_name == "mlp":
        model, lr = MLP([64, 64, 10], "relu", seed=seed), lr or 3e-3
    else:
        raise ValueError(f"model_name must be 'softmax' or 'mlp'; got {model_name!r}")
    opt = fastgd.Adam([model.params], lr=lr)
    hist = fit(model, opt, Xtr, ytr, epochs=epochs, batch_size=32, seed=seed, val_data=(Xte, yte),
               progress=progress)
    return model, hist


def demo_digits(plot=None, epochs=20, out=None):
    out = out or sys.stdout  # looked up at call time (redirections, capture)
    data = load_digits_split()
    print(f"Digits: {len(data[0])} training and {len(data[1])} test images (8x8), 10 classes; "
          "mini-batch Adam, batch 32", file=out)
    runs = {}
    for name, title in (("softmax", "softmax regression (64 -> 10)"), ("mlp", "MLP (64 -> 64 relu -> 10)")):
        print(f"\n{title}", file=out)
        t0 = time.perf_counter()
        _, hist = train_digits(name, epochs, data=data, progress="plain")
        runs[title] = hist
        print(f"  test accuracy {hist.val_acc[-1]:.4f} after {hist.epochs} epochs in "
              f"{time.perf_counter() - t0:.2f} s", file=out)
    if plot:
        plt = _plt()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for title, h in runs.items():
            ep = np.arange(1, h.epochs + 1)
            axes[0].plot(ep, h.loss, label=f"{title} train")
            axes[0].plot(ep, h.val_loss, "--", label=f"{title} test")
            axes[1].plot(ep, h.val_acc, label=title)
            axes[2].semilogy(ep, h.grad_norm, label=title)
        axes[0].set(title="loss", xlabel="epoch")
        axes[1].set(title="test accuracy", xlabel="epoch")
        axes[2].set(title="mean gradient norm", xlabel="epoch")
        axes[0].legend(fontsize=7)
        _save(fig, plot, out)
    return 0


# --- explode -------------------------------------------------------------------------------------

def demo_explode(plot=None, out=None, *, depth=12, width=64, epochs=15, n=512):
    out = out or sys.stdout  # looked up at call time (redirections, capture)
    from .train import study
    X, y = study.make_classification(n=n)
    print(f"Deep MLP: {depth} hidden layers of {width}; gradient norm ||dL/dW_l|| per layer at "
          "initialisation (layer 1 = input side)", file=out)
    norms = study.init_study(X, y, depth=depth, width=width)
    shown = [0, depth // 2, depth]
    print(f"  {'init':<28}" + "".join(f"{'layer ' + str(i + 1):>11}" for i in shown)
          + f"{'first/last':>12}", file=out)
    for label, n in norms.items():
        ratio = n[0] / n[-1] if n[-1] > 0 else float("inf")
        print(f"  {label:<28}" + "".join(f"{n[i]:>11.2e}" for i in shown) + f"{ratio:>12.2e}", file=out)
    print("\nToo small: every layer's gradient vanishes. Too large: it explodes (tanh: growing "
          "towards the input;\nrelu: huge in every layer, with the activations). Xavier (tanh) and "
          "He (relu) keep it flat.", file=out)
    runs = None
    if _optimizer("SGD") is None:
        print("\n(training part skipped: fastgd.SGD is not in this build)", file=out)
    else:
        print(f"\nTraining with SGD (lr 0.05, batch 64, {epochs} epochs):", file=out)
        runs = study.training_study(X, y, depth=depth, width=width, epochs=epochs)
        for label, run in runs.items():
            h = run["history"]
            first = f"{h.loss[0]:.4g}" if h.loss else "-"
            last = f"{h.loss[-1]:.4g}" if h.loss else "-"
            print(f"  {label:<30} loss {first:>9} -> {last:<9} train accuracy {run['accuracy']:.3f}  "
                  f"clipped steps {h.clipped_steps:>4}  ({h.stop_reason})", file=out)
        print("Clipping the gradient norm at 1.0 keeps the too-large init from diverging; He init "
              "trains without it.", file=out)
    if plot:
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for label, n in norms.items():
            axes[0].semilogy(np.arange(1, len(n) + 1), np.maximum(n, 1e-30), marker=".", label=label)
        axes[0].set(title="per-layer gradient norm at init", xlabel="layer (1 = input side)",
                    ylabel="||dL/dW||")
        axes[0].legend(fontsize=7)
        if runs:
            for label, run in runs.items():
                h = run["history"]
                axes[1].semilogy(np.arange(1, h.epochs + 1), h.grad_norm, marker=".", label=label)
            axes[1].set(title="mean gradient norm while training (SGD)", xlabel="epoch")
            axes[1].legend(fontsize=7)
        _save(fig, plot, out)
    return 0


def _save(fig, path, out):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}", file=out)


DEMOS = {"quadratic": demo_quadratic, "digits": demo_digits, "explode": demo_explode}


def build_parser(prog="fastgd demo"):
    parser = argparse.ArgumentParser(prog=prog, description="Gradient descent, shown on small problems.")
    parser.add_argument("name", choices=sorted(DEMOS), help="which demo to run")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw loss curves and gradient norms "
                        "(needs matplotlib)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs for the digits demo (default 20)")
    return parser


def main(argv=None) -> int:
    """Run a demo; returns the exit status (0 ok, 1 a missing optional dependency, 2 bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help or bad usage; report it as a status
        return int(exc.code or 0)
    if args.epochs < 1:
        print("fastgd demo: --epochs must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.plot:
            _plt()  # fail before the work, not after it
        if args.name == "digits":
            return demo_digits(args.plot, args.epochs)
        return DEMOS[args.name](args.plot)
    except MissingDependency as exc:
        print(f"fastgd demo {args.name}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
