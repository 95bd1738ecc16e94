"""Run Python code in a fresh interpreter, so a hang or a crash fails a test instead of the run.

A fork, thread or fuzz test that could deadlock or segfault runs its body here: a timeout turns
a hang into a failure naming the test, a negative return code names the signal that killed it.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, *, timeout=120, env=None, args=()):
    """Run ``code`` (dedented) in a new interpreter with the work tree importable; return stdout.

    Fails (AssertionError) if it hangs past ``timeout`` seconds, is killed by a signal, or exits
    non-zero, with its stderr in the message.
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                              full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                              env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"hung: no exit after {timeout} s\nstdout:\n{exc.stdout}\n"
                             f"stderr:\n{exc.stderr}") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise AssertionError(f"killed by {name}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    if proc.returncode != 0:
        raise AssertionError(f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc.stdout


def json_runs_with_cache(code, cache_dir, runs=2, timeout=600):
    """Run ``code`` (printing one JSON line last) ``runs`` times, each in a fresh interpreter
    sharing Numba's disk cache in ``cache_dir``; return the parsed lines."""
    env = {"NUMBA_CACHE_DIR": str(cache_dir), "NUMBA_DISABLE_JIT": "0"}
    return [json.loads(run_python(code, timeout=timeout, env=env).strip().splitlines()[-1])
            for _ in range(runs)]
