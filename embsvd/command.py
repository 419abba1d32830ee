"""The ``embsvd`` console script: OpenBLAS set up (``embsvd.openblas``) before anything
loads numpy, then ``embsvd.pipeline.cli``."""

from __future__ import annotations

from embsvd import openblas


def main() -> int:
    openblas.prepare()
    from embsvd.pipeline.cli import main as cli_main

    return cli_main()
