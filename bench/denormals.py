"""Speed of an Adam step on denormal-heavy inputs against normal ones (issue 8).

    python bench/denormals.py [n]

Every value of param, grad and the moments is subnormal (below the dtype's smallest normal), so
most multiplies and adds of the step take subnormal operands or produce subnormal results. Some
CPUs (notably Intel cores) take microcode assists on those, 10-100x slower per operation; fastgd
does not flush them to zero (that would change results), so this measures what a user pays.
"""
import sys

import numpy as np

import fastgd
from fastgd.timing import round_robin


def main(n=1_000_000):
    rng = np.random.default_rng(0)
    for backend in fastgd.available_backends():
        fastgd.set_backend(backend)
        for dtype in (np.float32, np.float64):
            tiny = np.finfo(dtype).smallest_normal
            inputs = {
                "normal": [rng.standard_normal(n).astype(dtype) for _ in range(3)]
                + [np.abs(rng.standard_normal(n)).astype(dtype)],
                "denormal": [(rng.random(n) * tiny * 0.5).astype(dtype) for _ in range(4)],
            }
            candidates = {}
            for kind, (p, g, m, v) in inputs.items():
                saved = [p.copy(), m.copy(), v.copy()]

                def restore(p=p, m=m, v=v, saved=saved):
                    p[...], m[...], v[...] = saved

                def step(p=p, g=g, m=m, v=v, restore=restore):
                    restore()      # every call sees the same inputs; the restore is timed apart
                    fastgd.functional.adam_(p, g, m, v, step=3)

                candidates[kind], candidates[kind + " restore"] = step, restore
            t = round_robin(candidates, rounds=5, min_seconds=0.05)
            normal = t["normal"] - t["normal restore"]
            denormal = t["denormal"] - t["denormal restore"]
            print(f"{backend:6s} {np.dtype(dtype).name}: normal {normal * 1e3:7.2f} ms  "
                  f"denormal {denormal * 1e3:7.2f} ms  ratio {denormal / normal:5.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
