"""The demos: output, exit statuses, --plot, missing optional dependencies, python -m."""
import io
import os
import subprocess
import sys

import pytest

import fastgd
from fastgd import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quadratic(capsys):
    assert demo.main(["quadratic"]) == 0
    out = capsys.readouterr().out
    assert "Newton" in out and "Adam" in out and "3.0000000" in out
    if hasattr(fastgd, "SGD") and hasattr(fastgd, "RMSprop"):
        assert "skipped" not in out


def test_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "q.png"
    assert demo.main(["quadratic", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits(capsys):
    pytest.importorskip("sklearn")
    assert demo.main(["digits", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and out.count("epoch    2/2") == 2


def test_explode_small():
    out = io.StringIO()
    assert demo.demo_explode(out=out, depth=8, width=64, epochs=3, n=256) == 0
    text = out.getvalue()
    assert "Xavier" in text and "He" in text
    if hasattr(fastgd, "SGD"):
        assert "diverged" in text and "clip 1" in text


def test_missing_sklearn_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert demo.main(["digits"]) == 1
    err = capsys.readouterr().err
    assert "scikit-learn" in err or "sklearn" in err
    assert "pip install fastgd[demo]" in err


def test_missing_matplotlib_fails_before_work(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.main(["quadratic", "--plot", "x.png"]) == 1
    captured = capsys.readouterr()
    assert "pip install fastgd[demo]" in captured.err and "Minimise" not in captured.out


def test_bad_usage(capsys):
    assert demo.main(["nope"]) == 2
    assert demo.main([]) == 2
    assert demo.main(["digits", "--epochs", "0"]) == 2
    assert demo.main(["--help"]) == 0


def test_python_dash_m():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "fastgd.demo", "quadratic"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Newton" in res.stdout
