"""Kept for old notes: the Adam roofline table is now ``fastgd bench`` (fastgd/cli.py).

    python bench/adam_roofline.py [--n 16000000] [--threads 1,2] [--rounds 7]

runs ``fastgd bench --rules adam --sizes N --threads T --repeat R --backends <all usable>``:
in the same rounds, a stream kernel with Adam's access pattern (read p, g, m, v; write p, m, v:
28 bytes/element), fastgd's Adam on each backend, the NumPy reference, torch fused/foreach and
DeepSpeed's CPUAdam where installed.
"""
import argparse
import sys

from fastgd.cli import main as fastgd_main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="16e6")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", default="7")
    args = ap.parse_args()
    return fastgd_main(["bench", "--rules", "adam", "--sizes", args.n, "--threads", args.threads,
                        "--repeat", args.rounds])


if __name__ == "__main__":
    sys.exit(main())
