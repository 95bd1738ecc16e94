"""The tables of the Numba 8-bit quantize's AVX-512 path (fastgd/_numba/_quant.py), generated
from kernels/_quant_segments.py's ``mirrored`` (the tables kernels/_quant.h's
fgd_q8_codes_of_t16 uses), which takes seconds, and is not in an installed package: so they
are kept here as numbers. Regenerate with ``python fastgd/_numba/_quant_tables.py`` (from a
source tree); tests/test_numba_quant.py checks the numbers against the generator.

Per map: (c, K, S, P, A, B): the bucket of a = |t - 32767.5| (t the grid index) is bits 22..26
of RN(a * c + K), its piece S[key] + (a >= P[key]), its code trunc(RN(A * a + B)) (32 entries
each, the tails padded with the last, as in the header).
"""

# ---- BEGIN GENERATED ----
SIGNED = (
    1.1924999952316284, 0.5962499976158142,
    (0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5, 5, 5, 5, 5, 6, 7, 7, 7, 7, 7, 7, 0,
     0, 0),
    (65536.0, 65536.0, 4.5, 65536.0, 65536.0, 65536.0, 65536.0, 65536.0, 29.5, 51.5, 65536.0,
     65536.0, 65536.0, 65536.0, 309.5, 420.5, 65536.0, 65536.0, 65536.0, 65536.0, 65536.0,
     3185.5, 3738.5, 65536.0, 65536.0, 65536.0, 65536.0, 65536.0, 32652.5, 65536.0, 65536.0,
     65536.0),
    (1.0, 0.27272728085517883, 0.06666667014360428, 0.05421686917543411, 0.013513513840734959,
     0.010850942693650723, 0.002710027154535055, 0.002170171355828643, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0),
    (131.0, 134.09091186523438, 140.60000610351562, 141.22891235351562, 154.32432556152344,
     155.44432067871094, 181.8699188232422, 183.8888702392578, 255.5, 255.5, 255.5, 255.5,
     255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5,
     255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5),
)
UNSIGNED = (
    1.190000057220459, 0.5950000286102295,
    (0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5, 5, 5, 5, 5, 6, 7, 7, 7, 7, 7, 7, 0,
     0, 0),
    (65536.0, 65536.0, 4.5, 65536.0, 65536.0, 65536.0, 65536.0, 65536.0, 31.5, 42.5, 65536.0,
     65536.0, 65536.0, 65536.0, 318.5, 374.5, 65536.0, 65536.0, 65536.0, 65536.0, 65536.0,
     3231.5, 3507.5, 65536.0, 65536.0, 65536.0, 65536.0, 65536.0, 32710.5, 65536.0, 65536.0,
     65536.0),
    (2.3333332538604736, 0.5384615659713745, 0.1428571492433548, 0.10843373835086823,
     0.027027027681469917, 0.021701885387301445, 0.005434782709926367, 0.004340342711657286,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (6.666666507720947, 13.307692527770996, 26.0, 27.45783042907715, 53.89189147949219,
     55.88834762573242, 108.94021606445312, 112.77777862548828, 255.5, 255.5, 255.5, 255.5,
     255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5,
     255.5, 255.5, 255.5, 255.5, 255.5, 255.5, 255.5),
)
# ---- END GENERATED ----


def generate(segments):
    """The text between the GENERATED lines, from the module kernels/_quant_segments.py."""
    from fastgd import quant as Q
    out = []
    for name, qmap, signed in (("SIGNED", Q.SIGNED8, True), ("UNSIGNED", Q.UNSIGNED8, False)):
        c, K, S, P, A, B = segments.mirrored(qmap, signed)
        out.append(f"{name} = (")
        out.append(f"    {float(c)!r}, {float(K)!r},")
        for col, ints in ((S, True), (P, False), (A, False), (B, False)):
            col = list(col) + [col[-1]] * (32 - len(col))
            items = [str(int(v)) if ints else repr(float(v)) for v in col]
            lines, line = [], "    ("
            for it in items:
                if len(line) + len(it) + 2 > 96:
                    lines.append(line.rstrip())
                    line = "     "
                line += it + ", "
            lines.append(line.rstrip().rstrip(",") + "),")
            out += lines
        out.append(")")
    return "\n".join(out)


def _load_segments(root):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "_quant_segments", os.path.join(root, "kernels", "_quant_segments.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    import os
    import sys
    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    sys.path.insert(0, root)
    with open(here) as f:
        text = f.read()
    begin = text.index("\n", text.index("# ---- BEGIN GENERATED")) + 1
    end = text.index("# ---- END GENERATED")
    text = text[:begin] + generate(_load_segments(root)) + "\n" + text[end:]
    with open(here, "w") as f:
        f.write(text)
