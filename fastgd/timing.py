"""Timing for benchmarks: round-robin medians, so drift on a shared machine hits every row alike.

The machine this runs on is noisy and its bandwidth drifts within minutes; timing candidates one
after another would compare different moments. ``round_robin`` times every candidate once per
round, for several rounds, and reports medians: the numbers of one call are comparable.
"""
import statistics
import time


def round_robin(candidates, rounds=7, min_seconds=0.02, warmup=1, before=None):
    """Median seconds per call of each zero-argument callable in ``candidates`` (a dict).

    Each round calls every candidate enough times to run at least ``min_seconds``, starting one
    candidate further along the list each round (round r begins with candidate r mod n): a row
    that always ran right after the same neighbour (a stream that has just swept the cache, a
    kernel that leaves the other core busy) carried that neighbour's effect in every sample;
    the same two-kernel comparison came out 5% either way with the order swapped (measured).
    ``before``: {name: zero-argument callable} run, untimed, before each batch of calls of that
    candidate (e.g. ``functools.partial(fastgd.set_backend, "numba")``).
    """
    before = before or {}

    def prepare(name):
        if name in before:
            before[name]()
    for name, fn in candidates.items():
        prepare(name)
        for _ in range(warmup):
            fn()
    reps = {}
    for name, fn in candidates.items():
        prepare(name)
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        reps[name] = max(1, int(min_seconds / one))
    samples = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        start = r % len(names) if names else 0
        for name in names[start:] + names[:start]:
            fn, k = candidates[name], reps[name]
            prepare(name)
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    return {name: statistics.median(s) for name, s in samples.items()}
