"""``python -m fastgd``: the same as the ``fastgd`` command (fastgd/cli.py)."""
import sys

from .cli import main

sys.exit(main())
