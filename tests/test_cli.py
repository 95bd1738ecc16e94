"""The fastgd command: output structure and JSON schema (never the times), bad arguments, exit codes."""
import json
import os
import subprocess
import sys
import types

import pytest
from _helpers import require_backend

import fastgd
from fastgd import backends as registry
from fastgd import cli
from fastgd.benchmarks import SCHEMA
from fastgd.rules import RULES

# Tiny and quick: a few milliseconds per row; the stream arrays are small too (no roofline here).
TINY = ["bench", "--quick", "--sizes", "1e3,3x300", "--stream-size", "1e5", "--threads", "1",
        "--backends", "cython,numba,numpy", "--repeat", "1", "--no-progress"]

ROW_KEYS = {
    "rule": str, "size": str, "elements": int, "tensors": int, "layout": str, "dtype": str, "threads": int,
    "backend": str, "kind": str, "seconds": float, "bytes_per_element": int, "gbps": float,
    "bandwidth_gbps": float, "estimated": bool, "stream_elements": int, "cache_stream_gbps": float,
    "cache_stream_elements": int, "cache_ratio": float, "in_cache": bool,
}


def check_schema(data, rules, sizes, backends, threads):
    assert data["schema"] == SCHEMA
    assert set(data) >= {"created", "argv", "environment", "settings", "results", "skipped"}
    env = data["environment"]
    for key in ("fastgd", "python", "numpy", "numba", "cpu", "simd", "cores", "l3_bytes", "build", "peers"):
        assert key in env
    assert data["settings"]["rules"] == rules
    rows = data["results"]
    assert len(rows) == len(rules) * len(sizes) * len(threads) * (1 + len(backends))
    for row in rows:
        for key, typ in ROW_KEYS.items():
            assert isinstance(row[key], typ), (key, row)
        for key in ("fraction_of_bandwidth", "speedup_vs_numpy", "speedup_vs_best_peer"):
            assert row[key] is None or isinstance(row[key], float)
        assert row["kind"] in ("stream", "fastgd", "reference", "peer")
        assert row["seconds"] > 0 and row["gbps"] > 0
        assert row["bytes_per_element"] == RULES[row["rule"]].bytes_per_element
        if row["backend"] != "stream":
            assert row["speedup_vs_numpy"] is not None
        # the decision is the measured ratio against the threshold, and decides the fraction
        assert row["cache_ratio"] == pytest.approx(row["cache_stream_gbps"] / row["bandwidth_gbps"])
        assert row["in_cache"] == (row["cache_ratio"] >= data["settings"]["cache_ratio_threshold"])
        assert (row["fraction_of_bandwidth"] is None) == row["in_cache"]
        assert row["cache_stream_elements"] >= row["elements"]
        assert row["stream_elements"] >= 4 * row["elements"]
    seen = {(r["rule"], r["size"], r["backend"]) for r in rows}
    for rule in rules:
        for size in sizes:
            for backend in ("stream", *backends):
                assert (rule, size, backend) in seen


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    """One tiny run over every rule, shared by the tests that read its output."""
    path = tmp_path_factory.mktemp("bench") / "run.json"
    capture = tmp_path_factory.mktemp("out") / "stdout.txt"
    old = sys.stdout
    with open(capture, "w") as f:
        sys.stdout = f
        try:
            code = cli.main(TINY + ["--rules", "all", "--json", str(path)])
        finally:
            sys.stdout = old
    return code, path, capture.read_text()


def test_bench_every_rule_table_and_json(bench_json):
    code, path, out = bench_json
    assert code == 0
    for line in ("fastgd ", "CPU:", "Build:", "Run:"):
        assert line in out
    assert "stream (bw)" in out
    for name in RULES:
        assert name in out
    assert f"wrote {path}" in out
    data = json.loads(path.read_text())
    check_schema(data, list(RULES), ["1,000", "3x300"], ["cython", "numba", "numpy"], [1])
    assert {r["layout"] for r in data["results"] if r["size"] == "3x300" and r["kind"] == "fastgd"} == {
        "FlatParams"}


def test_bench_plain_text_without_rich(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_rich", None)
    assert cli.main(TINY[:2] + ["--sizes", "1e3"] + TINY[4:] + ["--rules", "adam"]) == 0
    out = capsys.readouterr().out
    assert "stream (bw)" in out and "x numpy" in out
    assert "pip install fastgd[bench]" in out
    assert "┃" not in out and "│" not in out


def test_bench_plot_and_compare(bench_json, tmp_path, capsys):
    code, path, _ = bench_json
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    assert cli.main(TINY + ["--rules", "adam", "--sizes", "1e3", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert cli.main(["bench", "--compare", str(path), str(path)]) == 0
    out = capsys.readouterr().out
    assert "A/B" in out and "1.00" in out


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["bench", "--rules", "adam,nope"],
    ["bench", "--sizes", "0"],
    ["bench", "--sizes", "-16e6"],
    ["bench", "--sizes", "1.5"],
    ["bench", "--sizes", "big"],
    ["bench", "--sizes", "0x10"],
    ["bench", "--backends", "cuda"],
    ["bench", "--dtype", "float16"],
    ["bench", "--threads", "0"],
    ["bench", "--threads", "1,x"],
    ["bench", "--threads", "100000"],
    ["bench", "--repeat", "0"],
    ["bench", "--repeat", "two"],
    ["bench", "--stream-size", "0"],
    ["bench", "--preset", "nope"],
    ["bench", "--preset", "clip", "--rules", "adam"],
    ["bench", "--preset", "callpath", "--sizes", "1e3"],
    ["bench", "--preset", "callpath", "--plot", "x.png"],
    ["bench", "--preset", "formats", "--dtype", "float64"],
    ["bench", "--preset", "formats", "--rules", "adam"],
    ["bench", "--json", "/nonexistent-dir/out.json"],
    ["bench", "--json", "/"],
    ["bench", "--plot", "/nonexistent-dir/out.png"],
    ["bench", "--compare", "/nonexistent-dir/a.json", "/nonexistent-dir/b.json"],
    ["verify", "--rules", "nope"],
    ["verify", "--backends", "numpy"],
], ids=lambda a: " ".join(a) or "no-command")
def test_bad_arguments_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_compare_refuses_a_file_that_is_not_a_bench_run(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert cli.main(["bench", "--compare", str(bad), str(bad)]) == 2
    assert "not a `fastgd bench --json` file" in capsys.readouterr().err


def test_console_script_bad_size_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(fastgd.__file__))}
    proc = subprocess.run([sys.executable, "-m", "fastgd", "bench", "--sizes", "0"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "size must be a positive whole number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("backend cython", "backend numba", "backend numpy", "OpenMP", "Numba", "threads",
                 "CPU", "SIMD", "L3", "compile flags", "peer torch", "peer deepspeed"):
        assert word in out
    # each compiled backend says how it stores bfloat16 (the CPU's instruction or integer ops)
    assert out.count("bfloat16: ") >= 2, out
    # and Numba which quantize its 8-bit and 4-bit states run (the vector path where the target has it)
    from fastgd._numba import _quant
    assert ("8-bit quantize: AVX-512" in out) == bool(_quant.VECTOR_Q8), out


def test_the_lane_loops_are_built_as_setup_py_chose():
    """setup.py probes the width gcc vectorises the rules' arithmetic at and builds every module
    with it (FGD_VECTOR_BITS), and chooses the lane loops' prefetch from the L1 data cache
    (FGD_PF_AHEAD): the Cython build says what build_info.json recorded."""
    require_backend("cython")
    info = registry.build_info()
    paths = registry.kernel("format_paths", "cython")()
    assert info.get("vector_bits") in (256, 512), info
    if "avx512f" in info.get("build_cpu_simd_flags", []):
        assert "16-bit loads and stores" in paths, paths   # the width matters only with AVX-512
    if "16-bit loads and stores" in paths:
        assert ("16-bit loads and stores 512-bit" in paths) == (info["vector_bits"] == 512), (info, paths)
    # and the lane loops prefetch as setup.py chose (none where the L1 data cache is under 48 KiB)
    ahead = info.get("prefetch_ahead")
    if info.get("march") == "native" and info.get("l1d_bytes"):
        assert (ahead == 0) == (info["l1d_bytes"] < 48 * 1024), info
    if ahead == 0:
        assert "no software prefetch in the lane loops" in paths, paths
    else:
        assert f"lane loads prefetch {ahead or 2048} elements ahead" in paths, (info, paths)


def test_verify_passes(capsys):
    assert cli.main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for name in RULES:
        assert name in out


class _Broken:
    """A backend module whose every kernel is wrong (or raises): verify must catch it."""

    def __init__(self, real, mode):
        self._real, self._mode = real, mode

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        if not callable(fn) or "threads" in name:
            return fn

        def broken(param, *args):
            if self._mode == "raise":
                raise RuntimeError("injected failure")
            out = fn(param, *args)
            param *= 1.001
            return out
        return broken


@pytest.mark.parametrize("mode", ["wrong", "raise"])
def test_verify_fails_on_a_broken_backend(monkeypatch, capsys, mode):
    numba_backend = registry._BACKENDS["numba"]
    assert numba_backend.load()
    monkeypatch.setattr(numba_backend, "module", _Broken(numba_backend.module, mode))
    monkeypatch.setattr(registry, "_kernels", {})
    code = cli.main(["verify", "--rules", "adam"])
    out = capsys.readouterr()
    assert code == 1
    lines = [line for line in out.out.splitlines() if "numba" in line]
    assert lines and all("FAIL" in line for line in lines)
    assert all("FAIL" not in line for line in out.out.splitlines() if "cython" in line)
    if mode == "raise":
        assert "injected failure" in out.out


def test_demo_missing_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastgd.demo", None)   # importing it raises ModuleNotFoundError
    assert cli.main(["demo", "quadratic"]) == 2
    assert "fastgd.demo is missing" in capsys.readouterr().err


def test_demo_forwards_argv(monkeypatch):
    seen = []
    fake = types.ModuleType("fastgd.demo")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "fastgd.demo", fake)
    monkeypatch.setattr(fastgd, "demo", fake, raising=False)
    assert cli.main(["demo", "digits", "--plot", "x.png"]) == 0
    assert seen == [["digits", "--plot", "x.png"]]


def test_a_rule_added_to_RULES_is_benchmarked_and_verified(monkeypatch, tmp_path, capsys):
    from fastgd.rules import Rule
    monkeypatch.setitem(RULES, "adam_maximize", Rule("adam_maximize", "Adam", {"maximize": True},
                                                     torch="Adam", torch_fused=True))
    monkeypatch.setitem(RULES, "no_peer", Rule("no_peer", "AdamW", {}))
    path = tmp_path / "run.json"
    assert cli.main(TINY + ["--sizes", "1e3", "--rules", "adam_maximize,no_peer", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    check_schema(data, ["adam_maximize", "no_peer"], ["1,000"], ["cython", "numba", "numpy"], [1])
    assert cli.main(["verify", "--rules", "adam_maximize,no_peer"]) == 0
    out = capsys.readouterr().out
    assert "adam_maximize" in out and "no_peer" in out


def test_missing_extras_say_what_to_install(monkeypatch, tmp_path, capsys):
    from fastgd import benchmarks
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # importing it raises ImportError
    assert cli.main(TINY + ["--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install fastgd[bench]" in capsys.readouterr().err
    monkeypatch.setattr(benchmarks, "peer_status", lambda: {
        "torch": "torch is not installed (pip install fastgd[torch])", "deepspeed": "no"})
    assert cli.main(["bench", "--backends", "cython,torch"]) == 2
    assert "pip install fastgd[torch]" in capsys.readouterr().err


def test_a_failing_case_is_reported_not_fatal(monkeypatch, tmp_path, capsys):
    from fastgd.rules import Rule
    monkeypatch.setitem(RULES, "not_built", Rule("not_built", "Adam", {"lr": "not a number"}))
    path = tmp_path / "run.json"
    assert cli.main(TINY + ["--sizes", "1e3", "--rules", "adam,not_built", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert {r["rule"] for r in data["results"] if r["backend"] != "stream"} == {"adam"}
    assert any(s["rule"] == "not_built" and s["reason"].startswith("FAILED") for s in data["skipped"])
    assert "FAILED" in capsys.readouterr().out
