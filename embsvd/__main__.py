"""The ``embsvd`` command (the console script; also ``python -m embsvd``): OpenBLAS set up
(``embsvd.io.openblas``) before anything loads numpy, then ``embsvd.pipeline.cli``.
Only the command imports this module: importing it sets the process's environment."""

from __future__ import annotations

import sys

from embsvd.io import openblas

openblas.prepare()  # before numpy loads: OpenBLAS's idle threads sleep at once

from embsvd.pipeline.cli import main  # noqa: E402 (after OpenBLAS's set-up)

if __name__ == "__main__":
    sys.exit(main())
