"""The ``fastgd`` command (also ``python -m fastgd``): bench, verify, info, demo.

    fastgd bench [--preset rules|adam|family|clip|callpath|formats|lowbit] [--rules adam,sgd,...]
                 [--sizes 1e3,16e6,many] [--dtype float32|float64] [--threads 1,2]
                 [--backends cython,numba,numpy,torch,deepspeed] [--repeat N]
                 [--quick] [--json FILE] [--plot FILE.png] [--stream-size N]
    fastgd bench --compare A.json B.json
    fastgd verify [--rules ...] [--backends cython,numba]
    fastgd info
    fastgd demo quadratic|digits|explode [--plot FILE]

``bench`` measures, in the same rounds, the memory bandwidth of a stream kernel with each rule's
access pattern and the step of every rule on every backend, and prints the median time, GB/s,
the fraction of that bandwidth (or "cache" when a stream at the row's size is measured clearly
faster than the big one), and the speedups over the NumPy reference and over the fastest peer
present (torch fused/foreach, DeepSpeed). ``--preset`` picks other measurements (clip,
callpath, formats: AdamW in every storage format against its stream, torch fused and DeepSpeed,
and issue 14's targets; lowbit: AdamW with 8-bit and 4-bit states against its stream, torch fused,
bitsandbytes and torchao, the state memory and issue 15's targets; benchmarks.PRESETS). The JSON
schema is in fastgd/benchmarks.py.
Bad arguments print a message and exit with status 2; ``verify`` exits 1 when a backend
disagrees with the reference.
"""
import argparse
import datetime
import os
import sys

import numpy as np

import fastgd
from . import benchmarks as B
from . import lowbit_bench as L
from .rules import RULES

try:  # rich is optional (pip install fastgd[bench]); without it the tables are plain text
    import rich
    from rich.console import Console
    from rich.table import Table
    _rich = rich
except ImportError:  # pragma: no cover - exercised by monkeypatching _rich in the tests
    _rich = None

BENCH_EXTRA = "pip install fastgd[bench]"


# --- output: rich when present, plain text otherwise ----------------------------------------------

def _console(stderr=False):
    return Console(stderr=stderr, width=None if sys.stdout.isatty() else 132, highlight=False)


def _print(text="", err=False):
    print(text, file=sys.stderr if err else sys.stdout)


def _show_table(title, columns, rows, *, sections=None, caption=None, header=True, fold=None):
    """columns: [(header, justify)]; rows: lists of str; sections: row indices starting a section;
    fold: index of the one column that may wrap (free text), the others never do."""
    sections = set(sections or ())
    if _rich is not None:
        from rich.text import Text
        console = _console()
        console.print(Text(title, style="bold"))
        table = Table(caption=caption, caption_justify="left", show_header=header)
        for i, (name, justify) in enumerate(columns):
            table.add_column(name, justify=justify, no_wrap=i != fold, overflow="fold" if i == fold else "ellipsis")
        for i, row in enumerate(rows):
            if i in sections and i:
                table.add_section()
            table.add_row(*row)
        console.print(table)
        return
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, (h, _) in enumerate(columns)]

    def line(cells):
        return "  ".join(c.rjust(w) if just == "right" else c.ljust(w)
                         for c, w, (_, just) in zip(cells, widths, columns)).rstrip()
    _print(title)
    if header:
        _print(line([h for h, _ in columns]))
        _print("  ".join("-" * w for w in widths))
    for i, row in enumerate(rows):
        if i in sections and i:
            _print()
        _print(line(row))
    if caption:
        _print(caption)
    _print()


class _Progress:
    """A progress bar on stderr (rich), or one line per step in plain text."""

    def __init__(self, total, quiet=False):
        self.total, self.done, self.quiet = total, 0, quiet
        self._bar = None
        if _rich is not None and not quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=_console(stderr=True), transient=True)
            self._task = self._bar.add_task("starting", total=total)

    def __enter__(self):
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, description):
        if self._bar is not None:
            if self.done:
                self._bar.advance(self._task)
            self._bar.update(self._task, description=description)
        elif not self.quiet:
            _print(f"[{self.done + 1}/{self.total}] {description}", err=True)
        self.done += 1


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt(x, spec, missing="-"):
    return missing if x is None else format(x, spec)


def _mib(n):
    return "?" if not n else f"{n / 1024 ** 2:.0f} MiB"


# --- argument checks ---------------------------------------------------------------------------------

def _writable(path, what):
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise B.UsageError(f"{what} {path} is a directory")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise B.UsageError(f"{what}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise B.UsageError(f"{what}: cannot write {path}")
    return path


def _backend_list(text, allowed):
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise B.UsageError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _check_requested_backends(names):
    """Refuse (exit 2, with the install hint) a backend the user asked for that cannot run here."""
    status = None
    for name in names:
        if name in B.FASTGD_BACKENDS:
            status = status or fastgd.backend_status()
            ok, why = status[name]
            if not ok:
                raise B.UsageError(f"backend {name} is unusable here: {why}")
        elif name in ("torch", "deepspeed"):
            why = B.peer_status()[name]
            if why:
                raise B.UsageError(why)
        elif name in ("bitsandbytes", "torchao"):
            why = L.peer_status()[name]
            if why:
                raise B.UsageError(why)


# --- bench ---------------------------------------------------------------------------------------

def _header(env, settings):
    build = env.get("build") or {}
    torch_v = env.get("torch") or "absent"
    ds = env.get("deepspeed") or "absent"
    lines = [
        f"fastgd {env['fastgd']}  Python {env['python']}  NumPy {env['numpy']}  "
        f"Numba {env.get('numba')} ({env.get('numba_threading_layer')})  torch {torch_v}  DeepSpeed {ds}",
        f"CPU: {env['cpu']}, {env['cores']} cores, L3 {_mib(env.get('l3_bytes'))}, "
        f"SIMD {' '.join(env['simd']) or '?'}",
        f"Build: {build.get('compiler', 'no build_info.json')}; {' '.join(build.get('compile_args', []))}; "
        f"OpenMP {env.get('openmp_version')}",
    ]
    if settings is not None:
        streams = "" if settings["preset"] == "callpath" else (
            f", stream arrays of max({settings['stream_elements']:,}, {B.CACHE_FACTOR}x the row) float32")
        lines.append(
            f"Run: preset {settings['preset']}, dtype {settings['dtype']}, threads "
            f"{','.join(map(str, settings['threads']))}, {settings['rounds']} round-robin rounds (medians)"
            + streams + ("; QUICK mode" if settings["quick"] else ""))
    for peer, why in (env.get("peers") or {}).items():
        if why:
            lines.append(f"No {peer} rows: {why}")
    if "bitsandbytes" in env or "torchao" in env:
        lines.append(f"bitsandbytes {env.get('bitsandbytes') or 'absent'}  torchao {env.get('torchao') or 'absent'}")
    if settings is not None and "deepspeed" in settings["backends"]:
        lines.append("DeepSpeed rows: its CPU optimizers JIT-build C++ on first use (a few minutes, "
                     "then cached in ~/.cache/torch_extensions)")
    return lines


def _bench_tables(data):
    results = data["results"]
    sizes = list(dict.fromkeys(r["size"] for r in results))
    for size in sizes:
        rows, sections = [], []
        last_group = None
        sub = [r for r in results if r["size"] == size]
        layout = next((r["layout"] for r in sub if r["kind"] == "fastgd"), None)
        fused = any(r["backend"] == "torch-fused" for r in sub)
        reference = any(r["backend"] == "numpy" for r in sub)
        for r in sub:
            group = (r["rule"], r["threads"])
            if group != last_group:
                sections.append(len(rows))
                last_group = group
            stream = r["backend"] == "stream"
            cache = (("in " if r["in_cache"] else "out ") + f"{r['cache_ratio']:.2f}x") if stream else ""
            speedups = [(r["speedup_vs_numpy"], ".1f")] if reference else []
            speedups += [(r.get("speedup_vs_torch_fused"), ".2f")] if fused else []
            speedups += [(r["speedup_vs_best_peer"], ".2f")]
            rows.append([
                r["rule"] if stream else "",
                str(r["threads"]) if stream else "",
                "stream (bw)" if stream else r["backend"],
                ("floor " if stream else ("~" if r["estimated"] else "")) + _fmt_time(r["seconds"]),
                _fmt(r["gbps"], ".1f"),
                _fmt(r["fraction_of_bandwidth"], ".2f", "cache"), cache,
            ] + ["" if stream else _fmt(x, spec) for x, spec in speedups])
        sub0 = sub[0]
        title = (f"{size} elements" + (f" ({sub0['tensors']:,} tensors, {layout})" if sub0["tensors"] > 1 else "")
                 + f", {sub0['dtype']}")
        notes = ["floor: this rule's bytes at the stream bandwidth; of bw: GB/s / stream GB/s; "
                 "in cache: the rule's pattern streamed at this size (the probe) is >= "
                 f"{B.CACHE_RATIO}x faster per byte than the big stream (ratio shown), so no fraction; "
                 "x numpy, x fused (torch fused), x peer (fastest of torch/DeepSpeed): speedups"]
        if any(r["estimated"] for r in sub):
            notes.append("~ NumPy reference timed on a 1M-element subsample and scaled (quick mode); "
                         "run without --quick for a measured reference.")
        caption = "\n".join(notes)
        columns = [("rule", "left"), ("thr", "right"), ("backend", "left"), ("time", "right"),
                   ("GB/s", "right"), ("of bw", "right"), ("cache", "right")]
        columns += [("x numpy", "right")] if reference else []
        columns += [("x fused", "right")] if fused else []
        columns += [("x peer", "right")]
        _show_table(title, columns, rows, sections=sections, caption=caption)
    _skipped(data)


def _skipped(data):
    skipped = {}
    for s in data.get("skipped", []):
        skipped.setdefault((s["backend"], s["reason"]), []).append(s["rule"])
    if skipped:
        _print("Rows not measured:")
        for (backend, reason), rules in skipped.items():
            _print(f"  {backend}: {reason} ({', '.join(dict.fromkeys(rules))})")


_RECIPE_COLUMNS = [("recipe", "left"), ("B/el", "right"), ("backend", "left"), ("time", "right"),
                   ("GB/s", "right"), ("of bw", "right"), ("cache", "right")]


def _recipe_tables(results, title, speedups, caption):
    """Per size and thread count one table of recipe rows (a section per recipe: its stream,
    then each backend), the preset's ``speedups`` [(result key, header, format)] last;
    ``title(size, tensors, threads)`` names it, ``caption(sub)`` says what its columns are."""
    for size, threads in dict.fromkeys((r["size"], r["threads"]) for r in results):
        sub = [r for r in results if r["size"] == size and r["threads"] == threads]
        rows, sections, last = [], [], None
        for r in sub:
            if r["recipe"] != last:
                sections.append(len(rows))
                last = r["recipe"]
            stream = r["kind"] == "stream"
            rows.append([
                r["recipe"] if stream else "", f"{r['bytes_per_element']:g}" if stream else "",
                "stream (bw)" if stream else r["backend"],
                ("floor " if stream else "") + _fmt_time(r["seconds"]), _fmt(r["gbps"], ".1f"),
                _fmt(r["fraction_of_bandwidth"], ".2f", "cache"),
                (("in " if r["in_cache"] else "out ") + f"{r['cache_ratio']:.2f}x") if stream else "",
            ] + ["" if stream else _fmt(r.get(key), spec) for key, _, spec in speedups])
        _show_table(title(size, sub[0]["tensors"], threads),
                    _RECIPE_COLUMNS + [(header, "right") for _, header, _ in speedups],
                    rows, sections=sections, caption=caption(sub))


def _tensors(tensors):
    return f" ({tensors:,} tensors)" if tensors > 1 else ""


def _formats_tables(data):
    """Preset formats: per size and thread count one table (a section per recipe), then the
    targets of issue 14."""
    def caption(sub):
        other_ds = sorted({(r["recipe"], r["deepspeed_recipe"]) for r in sub
                           if r.get("deepspeed_recipe") not in (None, r["recipe"])})
        return ("B/el: bytes per element of the recipe (its stream moves the same bytes, same roles and "
                "widths); of bw: GB/s / that stream's GB/s, same rounds; x bef: the backend's single float32 "
                "adam kernel (the before row) / this row's time; x tf32, x tbf16: torch.optim.AdamW(fused="
                "True) on float32 / bfloat16; x DS: DeepSpeedCPUAdam in the same formats"
                + "".join(f"; {a}: vs DeepSpeed {b}" for a, b in other_ds))

    _recipe_tables(data["results"],
                   lambda size, n, threads: f"AdamW storage formats, {size} elements{_tensors(n)}, "
                                            f"threads={threads}",
                   [("speedup_vs_before", "x bef", ".2f"), ("speedup_vs_torch_fused", "x tf32", ".2f"),
                    ("speedup_vs_torch_fused_bf16", "x tbf16", ".2f"), ("speedup_vs_deepspeed", "x DS", ".2f")],
                   caption)
    if data.get("targets"):
        _targets_table(data["targets"], "Issue 14 targets")
    _skipped(data)


def _targets_table(targets, title):
    rows = []
    for t in targets:
        why = t["why_not_measured"] or ""
        why = "row skipped" if why.startswith("row skipped") else why   # the reason: under Rows not measured
        status = ("met" if t["met"] else "MISSED") if t["met"] is not None else f"- ({why})"
        rows.append([t["target"], t["size"], str(t["threads"]), t["backend"], _fmt(t["value"], ".2f"),
                     f"{t['least']:g}", status])
    _show_table(f"{title} (one run on this machine; ratios only mean anything within it)",
                [("target", "left"), ("size", "right"), ("thr", "right"), ("backend", "left"),
                 ("value", "right"), ("least", "right"), ("", "left")], rows, fold=6)


def _lowbit_tables(data):
    """Preset lowbit: per size and thread count one table (a section per recipe), then issue
    15's targets, the state memory per parameter, the rows not measured."""
    _recipe_tables(
        data["results"],
        lambda size, n, threads: f"AdamW with 8-bit and 4-bit states, {size} elements{_tensors(n)}, "
                                 f"threads={threads}",
        [("speedup_vs_fp32", "x fp32", ".2f"), ("speedup_vs_torch_fused", "x tf32", ".2f"),
         ("speedup_vs_bnb8", "x bnb8", ".1f"), ("speedup_vs_torchao8", "x ao8", ".1f")],
        lambda sub: ("B/el: bytes per element of the recipe, absmax included (its stream moves the same "
                     "bytes: p read+written, g read, each state's codes and absmax read+written); of bw: "
                     "GB/s / that stream's GB/s, same rounds (peers: of the nominal bytes of their group's "
                     "recipe); x fp32: the backend's float32 adam_many / this row's time; x tf32: "
                     "torch.optim.AdamW(fused=True) float32; x bnb8, x ao8: bitsandbytes / torchao "
                     "AdamW8bit"))
    if data.get("targets"):
        _targets_table(data["targets"], "Issue 15 targets")
    memory = data.get("memory") or []
    if memory:
        rows = []
        for m in memory:
            status = "" if m["met"] is None else ("met" if m["met"] else "MISSED")
            bound = "" if m["most"] is None else f"<= {m['most']:g}"
            shared = f"; {m['shared_bytes']:,} B shared, not counted" if m["shared_bytes"] else ""
            rows.append([m["size"], m["optimizer"], m["recipe"], f"{m['state_bytes']:,}",
                         f"{m['bytes_per_param']:.4f}", _fmt(m["vs_float32"], ".4f"), bound, status,
                         m["counted"] + shared])
        _show_table("Optimizer state memory, measured from the state arrays (step counters not counted)",
                    [("size", "right"), ("optimizer", "left"), ("recipe", "left"), ("state bytes", "right"),
                     ("B/param", "right"), ("x float32", "right"), ("target", "left"), ("", "left"),
                     ("counted", "left")], rows, fold=8,
                    caption="x float32: B/param / fastgd's float32 states' (8 B/param); issue 15: 8-bit <= 0.26, "
                            "4-bit <= 0.14 (fastgd)")
    _skipped(data)


def _callpath_table(data):
    results = data["results"]
    for threads in dict.fromkeys(r["threads"] for r in results):
        rows = []
        for r in (r for r in results if r["threads"] == threads):
            per = f" ({_fmt_time(r['seconds_per_tensor'])}/tensor)" if r["tensors"] > 1 else ""
            rows.append([r["case"], r["backend"], f"{r['tensors']}x{r['elements']:,}",
                         _fmt_time(r["seconds"]) + per, _fmt(r["vs_np_add"], ".1f"),
                         _fmt(r["vs_torch_fused"], ".2f", "")])
        _show_table(f"call paths, float32, threads={threads}",
                    [("call", "left"), ("backend", "left"), ("arrays", "right"), ("time per call", "right"),
                     ("x np.add", "right"), ("x torch fused", "right")], rows,
                    caption="x np.add: time per call (per tensor for the 150-tensor rows) / np.add(a, b, out=c)"
                            " on 1,000 float32; x torch fused: time / torch.optim.AdamW(fused=True)'s "
                            "(> 1: slower)")
    _skipped(data)


def _rule_label(r):
    """A row's rule, with its storage-format recipe (preset formats) when it has one."""
    return r["rule"] + (f" {r['recipe']}" if r.get("recipe") else "")


def _plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in data["results"] if r["backend"] != "stream"]
    panels = list(dict.fromkeys((r["size"], r["threads"]) for r in rows))
    rules = list(dict.fromkeys(_rule_label(r) for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.1 * len(rules) * max(1, len(backends)) / 2), 3.2 * len(panels)),
                             squeeze=False)
    width = 0.8 / max(1, len(backends))
    for ax, (size, threads) in zip(axes[:, 0], panels):
        sub = [r for r in rows if r["size"] == size and r["threads"] == threads]
        use_bw = any(r["fraction_of_bandwidth"] is not None for r in sub)
        key = "fraction_of_bandwidth" if use_bw else "speedup_vs_numpy"
        for j, backend in enumerate(backends):
            ys = []
            for rule in rules:
                r = next((r for r in sub if _rule_label(r) == rule and r["backend"] == backend), None)
                ys.append(r[key] if r and r[key] is not None else 0.0)
            ax.bar(np.arange(len(rules)) + (j - (len(backends) - 1) / 2) * width, ys, width, label=backend)
        if use_bw:
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(rules)))
        ax.set_xticklabels(rules, rotation=30, ha="right")
        ax.set_ylabel("fraction of stream bandwidth" if use_bw else "speedup over NumPy")
        ax.set_title(f"{size} elements, {sub[0]['dtype']}, {threads} thread(s)")
    axes[0, 0].legend(ncol=min(len(backends), 6), fontsize="small")
    fig.suptitle(f"fastgd bench, {data['environment']['cpu']}, {data['created'][:16]} UTC", fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / len(panels) / 3.2))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _compare(path_a, path_b):
    a, b = B.load_json(path_a), B.load_json(path_b)

    def key(r):   # callpath rows: their call in place of the rule, no size or dtype
        rule = _rule_label(r) if "rule" in r else r.get("case")
        return (rule, r.get("size", ""), r.get("dtype", ""), r["threads"], r["backend"])
    index_b = {key(r): r for r in b["results"]}
    rows, sections, last = [], [], None
    for ra in a["results"]:
        rb = index_b.get(key(ra))
        if rb is None:
            continue
        group = key(ra)[:4]
        if group != last:
            sections.append(len(rows))
            last = group
        ratio = ra["seconds"] / rb["seconds"] if rb["seconds"] else None
        rows.append([key(ra)[0], key(ra)[1], str(ra["threads"]), ra["backend"], _fmt_time(ra["seconds"]),
                     _fmt_time(rb["seconds"]), _fmt(ratio, ".2f"),
                     _fmt(ra.get("fraction_of_bandwidth"), ".2f"), _fmt(rb.get("fraction_of_bandwidth"), ".2f")])
    if not rows:
        raise B.UsageError(f"{path_a} and {path_b} have no row in common (rule, size, dtype, threads, backend)")
    _print(f"A: {path_a} ({a['created'][:16]}, {a['environment']['cpu']})")
    _print(f"B: {path_b} ({b['created'][:16]}, {b['environment']['cpu']})")
    _show_table("B against A (A time / B time: > 1 means B is faster)",
                [("rule", "left"), ("size", "right"), ("thr", "right"), ("backend", "left"), ("A", "right"),
                 ("B", "right"), ("A/B", "right"), ("A of bw", "right"), ("B of bw", "right")],
                rows, sections=sections)
    return 0


def _bench_settings(args):
    """Parsed, checked options of ``bench`` (UsageError on a bad one), the preset's defaults applied."""
    preset = B.PRESETS[args.preset]
    if args.rules and args.preset != "rules":
        raise B.UsageError(f"--rules applies to --preset rules only (--preset {args.preset} has its own)")
    if args.sizes and "sizes" not in preset:
        raise B.UsageError(f"--sizes does not apply to --preset {args.preset} (its sizes are fixed)")
    if args.plot and args.preset == "callpath":
        raise B.UsageError("--plot does not apply to --preset callpath")
    rules = B.parse_rules(args.rules or preset.get("rules"))
    sizes = B.parse_sizes(args.sizes or preset[("quick_sizes" if args.quick else "sizes")]) \
        if "sizes" in preset else []
    threads = B.parse_threads(args.threads) if args.threads else B.default_threads()
    lowbit = args.preset == "lowbit"
    if args.backends:
        backends = _backend_list(args.backends, L.BACKEND_CHOICES if lowbit else B.BACKEND_CHOICES)
        _check_requested_backends(backends)
    else:
        backends = L.default_backends() if lowbit else B.default_backends()
    if args.repeat is not None and args.repeat < 1:
        raise B.UsageError(f"--repeat must be >= 1; got {args.repeat}")
    stream_elements = B._count(args.stream_size, "--stream-size") if args.stream_size else B.STREAM_ELEMENTS
    cython_ok, cython_why = fastgd.backend_status()["cython"]
    if not cython_ok and args.preset != "callpath":
        raise B.UsageError("the bandwidth is measured with the Cython stream kernel, and the Cython "
                           f"extension is unusable: {cython_why}")
    if args.preset in ("formats", "lowbit") and args.dtype != "float32":
        raise B.UsageError(f"--dtype does not apply to --preset {args.preset} (its recipes give each array's "
                           "format)")
    rounds = args.repeat or (3 if args.quick else preset.get("rounds", 7))
    return {"preset": args.preset,
            "rules": rules if args.preset in ("rules", "adam", "family", "formats", "lowbit") else [],
            "sizes": [{"label": s.label, "elements": s.elements, "tensors": s.tensors} for s in sizes],
            "dtype": args.dtype, "threads": threads, "backends": backends, "rounds": rounds,
            "min_seconds": 0.005 if args.quick else 0.05, "quick": bool(args.quick),
            "stream_elements": stream_elements, "cache_ratio_threshold": B.CACHE_RATIO}, sizes


def _run_preset(settings, sizes, progress):
    common = {"threads": settings["threads"], "backends": settings["backends"], "rounds": settings["rounds"],
              "min_seconds": settings["min_seconds"], "progress": progress}
    if settings["preset"] == "callpath":
        return B.run_callpath(**common)
    common.update(sizes=sizes, dtype=settings["dtype"], stream_elements=settings["stream_elements"])
    if settings["preset"] == "clip":
        return B.run_clip(**common)
    if settings["preset"] == "formats":
        del common["dtype"]
        return B.run_formats(**common)
    if settings["preset"] == "lowbit":
        del common["dtype"]
        return L.run_lowbit(**common)
    return B.run_bench(rules=settings["rules"], quick=settings["quick"], **common)


def _groups(settings, sizes):
    """Round-robin groups the run has (for the progress bar)."""
    per_size = {"callpath": 0, "clip": 1, "formats": 1, "lowbit": 1}.get(settings["preset"], len(settings["rules"]))
    return max(1, len(sizes) * per_size) * len(settings["threads"])


def cmd_bench(args, argv):
    if args.compare:
        return _compare(*args.compare)
    settings, sizes = _bench_settings(args)
    json_path = _writable(args.json, "--json") if args.json else None
    plot_path = _writable(args.plot, "--plot") if args.plot else None
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise B.UsageError(f"--plot needs matplotlib, which is not installed ({BENCH_EXTRA})") from None
    env = B.environment()
    if settings["preset"] == "lowbit":
        extra = L.environment_extra()
        env.update(extra, peers={**env["peers"], **extra["peers"]})
    for line in _header(env, settings):
        _print(line)
    if _rich is None:
        _print(f"(plain-text tables: {BENCH_EXTRA} for rich tables and a progress bar)")
    _print()
    with _Progress(_groups(settings, sizes), quiet=args.no_progress) as progress:
        results, skipped, *more = _run_preset(settings, sizes, progress)
    data = {"schema": B.SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": list(argv), "environment": env, "settings": settings,
            "results": results, "skipped": skipped}
    for key, value in zip(("targets", "memory"), more):
        data[key] = value
    if settings["preset"] == "callpath":
        _callpath_table(data)
    elif settings["preset"] == "formats":
        _formats_tables(data)
    elif settings["preset"] == "lowbit":
        _lowbit_tables(data)
    else:
        _bench_tables(data)
    if json_path:
        import json
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
        _print(f"wrote {json_path}")
    if plot_path:
        _plot(data, plot_path)
        _print(f"wrote {plot_path}")
    return 0


# --- info ----------------------------------------------------------------------------------------

def _format_paths():
    """Which conversion instructions the Cython build uses for bfloat16/float16 (fixed by its
    -march at build time; kernels/_formats.h)."""
    ok, why = fastgd.backend_status()["cython"]
    if not ok:
        return f"- (cython unusable: {why})"
    return fastgd.backends.kernel("format_paths", "cython")()


def _numba_format_paths():
    """How the Numba target of this process stores bfloat16 (fastgd/_numba/_views.py: the CPU's
    instruction where the target has it) and float16."""
    ok, why = fastgd.backend_status()["numba"]
    if not ok:
        return f"- (numba unusable: {why})"
    from fastgd._numba import _views
    return f"{_views.format_paths()}; float16: LLVM half conversions"


def _numba_quant_paths():
    """Which quantize/dequantize the Numba target of this process runs for 8-bit and 4-bit
    states (fastgd/_numba/_quant.py: AVX-512 methods as LLVM IR where the target has them)."""
    ok, why = fastgd.backend_status()["numba"]
    if not ok:
        return f"- (numba unusable: {why})"
    from fastgd._numba import _quant
    q8 = "AVX-512 pieces" if _quant.VECTOR_Q8 else "grid table lookups"
    dq8 = ("AVX-512 VBMI byte planes" if _quant.VECTOR_DQ8 else
           "AVX-512 permutes" if _quant.VECTOR_Q8 else "map lookups")
    q4 = "AVX-512" if _quant.VECTOR_Q4 else "portable"
    return f"8-bit quantize: {q8}, dequantize: {dq8}; 4-bit: {q4}"


def cmd_info(args, argv):
    env = B.environment()
    status = fastgd.backend_status()
    build = env.get("build") or {}
    rows = [
        ["fastgd", f"{env['fastgd']} ({os.path.dirname(fastgd.__file__)})"],
        ["active backend", _active_backend()],
        ["threads", f"{fastgd.get_num_threads()} (cores: {env['cores']})"],
        ["Python / NumPy", f"{env['python']} / {env['numpy']}"],
        ["Numba", f"{env.get('numba')}, threading layer {env.get('numba_threading_layer')}"],
        ["OpenMP (Cython build)", f"{env.get('openmp_version')}"],
        ["compiler", build.get("compiler", "- (no build_info.json: extension not built)")],
        ["compile flags", " ".join(build.get("compile_args", [])) or "-"],
        ["-march", str(build.get("march")) + (" (specialised for the build CPU)" if build.get("march") == "native" else "")],
        ["CPU", env["cpu"]],
        ["SIMD", " ".join(env["simd"]) or "-"],
        ["L3 cache", _mib(env.get("l3_bytes"))],
        ["16-bit formats (Cython)", _format_paths()],
        ["16-bit formats (Numba)", _numba_format_paths()],
        ["8/4-bit states (Numba)", _numba_quant_paths()],
    ]
    for name in fastgd.backends.ORDER:
        ok, why = status[name]
        rows.append([f"backend {name}", "usable" if ok else f"UNUSABLE: {why}"])
    for peer, why in env["peers"].items():
        version = env.get(peer)
        if why is None and peer == "deepspeed":
            why_text = f"{version}: CPUAdam/CPUAdagrad rows in bench (JIT-built with g++ on first use, then cached)"
        else:
            why_text = version if why is None else why
        rows.append([f"peer {peer}", why_text])
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            rows.append([f"thread pool {pool['user_api']}",
                         f"{pool['internal_api']} {pool.get('version') or ''} "
                         f"{pool['num_threads']} threads ({os.path.basename(pool['filepath'])})"])
    except ImportError:
        pass
    _show_table("fastgd info", [("", "left"), ("", "left")], rows, header=False, fold=1)
    return 0


def _active_backend():
    try:
        return fastgd.get_backend()
    except Exception as exc:  # FASTGD_BACKEND names an unusable backend: say so, don't crash info
        return f"none: {exc}"


# --- verify --------------------------------------------------------------------------------------

def cmd_verify(args, argv):
    rules = B.parse_rules(args.rules)
    compiled = [b for b in fastgd.backends.ORDER if b != "numpy"]
    explicit = bool(args.backends)
    backends = _backend_list(args.backends, compiled) if explicit else compiled
    status = fastgd.backend_status()
    if not status["numpy"][0]:
        raise B.UsageError(f"the reference backend is unusable: {status['numpy'][1]}")
    rows, failures, sections = [], 0, []
    lengths = ", ".join(f"{n:,}" for n in B.VERIFY_LENGTHS)
    for name in rules:
        sections.append(len(rows))
        for dtype in ("float32", "float64"):
            for backend in backends:
                ok, why = status[backend]
                if not ok:
                    if explicit:
                        failures += 1
                    rows.append([name, dtype, backend, "FAIL" if explicit else "skip", "-", f"unusable: {why}"])
                    continue
                passed, worst, message = B.verify_one(RULES[name], backend, dtype)
                failures += not passed
                rows.append([name, dtype, backend, "ok" if passed else "FAIL",
                             "-" if worst == float("inf") else f"{worst:.2g}", message])
    _show_table(f"fastgd verify: every backend against the NumPy reference ({B.VERIFY_STEPS} steps, "
                f"lengths {lengths}, random data)",
                [("rule", "left"), ("dtype", "left"), ("backend", "left"), ("result", "left"),
                 ("err/tol", "right"), ("detail", "left")], rows, sections=sections, fold=5)
    if failures:
        _print(f"{failures} FAILED", err=True)
        return 1
    _print(f"all {len(rows)} checks passed")
    return 0


# --- demo ----------------------------------------------------------------------------------------

def cmd_demo(argv):
    import importlib
    try:
        demo = importlib.import_module("fastgd.demo")
    except ModuleNotFoundError as exc:
        if exc.name in ("fastgd.demo", "fastgd"):
            _print("fastgd demo: this install of fastgd has no demos (fastgd.demo is missing)", err=True)
        else:
            _print(f"fastgd demo: needs {exc.name}, which is not installed (pip install fastgd[demo])", err=True)
        return 2
    return demo.main(list(argv))


# --- parser --------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="fastgd", description="fastgd: fused CPU optimizer steps. "
                                     "Benchmark, verify, and inspect this install.")
    sub = parser.add_subparsers(dest="command", metavar="{bench,verify,info,demo}")
    sub.required = True
    rules = ", ".join(RULES)
    b = sub.add_parser("bench", help="time every rule on every backend against the measured memory bandwidth",
                       description="Time optimizer steps against a stream kernel measured in the same run.")
    presets = "; ".join(f"{name}: {p['about']}" for name, p in B.PRESETS.items())
    b.add_argument("--preset", choices=tuple(B.PRESETS), default="rules", help=f"what to measure (default "
                   f"rules). {presets}")
    b.add_argument("--rules", help=f"comma-separated rules, or all (default). Known: {rules}")
    b.add_argument("--sizes", help=f"comma-separated sizes: elements (1e3, 16e6), 'many' (1,000 tensors of "
                   f"1,000) or KxN (K tensors of N). Default {B.DEFAULT_SIZES} ({B.QUICK_SIZES} with --quick)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--threads", help="comma-separated thread counts (default 1,<cores>)")
    b.add_argument("--backends", help="comma-separated, from cython, numba, numpy, torch (fused and "
                   "foreach rows), deepspeed (default: every one usable here); --preset lowbit: from cython, "
                   "numba, torch, bitsandbytes, torchao (default: all, the absent ones skipped with the reason)")
    b.add_argument("--repeat", type=int, help="round-robin rounds; medians are reported (default 7, quick 3)")
    b.add_argument("--quick", action="store_true", help="fewer rounds, smaller default sizes, NumPy reference "
                   "timed on a 1M-element subsample and scaled (marked ~)")
    b.add_argument("--json", metavar="FILE", help="write every row to FILE (schema: fastgd/benchmarks.py)")
    b.add_argument("--plot", metavar="FILE.png", help="write a matplotlib chart (fraction of bandwidth)")
    b.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="ratio table of two --json runs")
    b.add_argument("--stream-size", metavar="N", help=f"least float32 elements per big-stream array "
                   f"(default {B.STREAM_ELEMENTS:,}; at least {B.CACHE_FACTOR}x the row's elements)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    v = sub.add_parser("verify", help="check every backend against the NumPy reference for every rule")
    v.add_argument("--rules", help=f"comma-separated rules (default all). Known: {rules}")
    v.add_argument("--backends", help="comma-separated compiled backends (default cython,numba)")
    sub.add_parser("info", help="versions, backends and why unusable, build flags, OpenMP, CPU, threads")
    sub.add_parser("demo", help="training demos: fastgd demo quadratic|digits|explode [--plot FILE]",
                   add_help=False)
    return parser


def main(argv=None):
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return cmd_demo(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, message printed)
        return exc.code if isinstance(exc.code, int) else 2
    handler = {"bench": cmd_bench, "verify": cmd_verify, "info": cmd_info}[args.command]
    try:
        return handler(args, argv)
    except B.UsageError as exc:
        _print(f"fastgd {args.command}: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        _print("interrupted", err=True)
        return 130
