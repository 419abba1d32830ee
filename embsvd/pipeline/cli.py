"""The ``embsvd`` command: work on the tracking store outside a Hydra run.

    embsvd runs reconcile [--tracking-uri URI] [--experiment NAME] [--host-gone HOST]
    python -m embsvd.pipeline.cli runs reconcile ...     (the same, without the script)

``runs reconcile`` writes the final writes a store refused earlier (pending folders) and
closes the runs left RUNNING by a process that is gone: SIGKILL, out of memory, a lost
node (``embsvd.tracking.reconcile_runs``). It prints every run it looked at.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from embsvd import tracking
from embsvd.pipeline.secrets import redact_text

CONFIG_FILE = Path("conf") / "config.yaml"  # what marks a project folder


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: the command line); return its exit status."""
    args = parser().parse_args(argv)
    return args.command(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="embsvd", description="Work on embsvd's tracking store outside a Hydra run."
    )
    groups = top.add_subparsers(dest="group", required=True, metavar="{runs}")
    runs = groups.add_parser("runs", help="the runs of a tracking store")
    actions = runs.add_subparsers(dest="action", required=True, metavar="{reconcile}")
    reconcile = actions.add_parser(
        "reconcile",
        help="close runs left RUNNING by a process that is gone; write pending final writes",
        description=(
            "Write the final writes the store refused earlier (pending folders), then close "
            "as KILLED every RUNNING run whose process is gone, with the reason in "
            "embsvd.error; a sweep's parent is closed once its children are all final. "
            "A run's process is known from its tags embsvd.host, embsvd.pid and "
            "embsvd.process_start; runs of another host are listed, not touched, unless "
            "--host-gone names that host."
        ),
    )
    reconcile.add_argument(
        "--tracking-uri",
        help="the store (default as experiments/run.py: $MLFLOW_TRACKING_URI, else "
        "mlruns/mlflow.db of the project: the nearest folder up from here with "
        "conf/config.yaml)",
    )
    reconcile.add_argument(
        "--experiment",
        default=tracking.DEFAULT_EXPERIMENT,
        help="the experiment whose runs to reconcile (default: %(default)s)",
    )
    reconcile.add_argument(
        "--host-gone",
        action="append",
        default=[],
        metavar="HOST",
        help="the processes of HOST are gone (e.g. after scancel): close its RUNNING runs "
        "too; repeatable; '*' means every other host and runs without process tags",
    )
    reconcile.set_defaults(command=reconcile_command)
    return top


def reconcile_command(args: argparse.Namespace) -> int:
    uri = tracking.resolve_tracking_uri(args.tracking_uri, find_project)
    shown = redact_text(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(
            f"--tracking-uri {shown}: no such sqlite database; pass the store's URI",
            file=sys.stderr,
        )
        return 1
    replayed: list[str] = []
    try:
        store = tracking.TrackingStore(uri, args.experiment, create=False, report=replayed.append)
    except ValueError as error:  # no such experiment: the message lists those there are
        print(f"--experiment {args.experiment}: {error}", file=sys.stderr)
        return 1
    changes = tracking.reconcile_runs(store, args.host_gone)
    for line in replayed:
        print(f"pending write: {line}")
    for change in changes:
        print(change)
    closed = [c for c in changes if c.status != "RUNNING"]
    print(
        f"{shown}, experiment {args.experiment}: {len(replayed)} pending writes replayed, "
        f"{len(closed)} runs closed, {len(changes) - len(closed)} left RUNNING"
    )
    return 0


def find_project() -> Path:
    """The project folder of the default store: the nearest folder from the working
    directory up that holds ``conf/config.yaml`` (else the working directory), as
    ``experiments/run.py`` finds it from the ``conf/`` it composes from."""
    here = Path.cwd().resolve()
    return next((d for d in (here, *here.parents) if (d / CONFIG_FILE).is_file()), here)


if __name__ == "__main__":
    sys.exit(main())
