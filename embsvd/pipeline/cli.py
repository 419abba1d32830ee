"""The ``embsvd`` command: the project's entry points and its tracking store from a shell.

    embsvd run [HYDRA ARGS]          = python experiments/run.py [HYDRA ARGS] (-m: a sweep)
    embsvd figures [HYDRA ARGS]      = python experiments/figures.py [HYDRA ARGS]
    embsvd sweeps                    the store's sweeps, newest first, with their runs counted
    embsvd export SWEEP [--format csv|parquet] [--output FILE] [--replicates KEY,...]
                                     every run of a sweep as one table (metrics, params, tags);
                                     with --replicates a row per configuration (mean, lo, hi, n)
    embsvd ui [--port PORT]          the MLflow UI on the store, at 127.0.0.1
    embsvd server [OPTIONS]          a shared MLflow server: database store, proxied
                                     artifacts, basic auth (embsvd/pipeline/server.py)
    embsvd runs reconcile            close runs whose process is gone; replay refused writes
    python -m embsvd.pipeline.cli ...   (the same, without the script)

``run`` and ``figures`` take the project folder (where ``conf/``, ``mlruns/`` and
``figures/`` are) as the nearest folder from the working directory up that holds
``conf/config.yaml`` (``pipeline/app.py``). The store commands take ``--tracking-uri``
(default as ``experiments/run.py`` resolves it: ``$MLFLOW_TRACKING_URI``, else the
project's ``mlruns/mlflow.db``) and ``--experiment``. docs/sweeps.md#command-line has
examples.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from embsvd import tracking
from embsvd.pipeline import app, server
from embsvd.pipeline.report import SERVER_SCHEMES, mlflow_ui_command
from embsvd.pipeline.secrets import redact_text

SWEEPS_SHOWN = 20  # `embsvd sweeps` lists this many unless told otherwise
UI_PORT = 5000


class CommandError(Exception):
    """A command that cannot go on: the message says what to change."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: the command line); return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in app.APPS:  # Hydra parses the rest: overrides, -m, --cfg, --help
        return app.run_app(argv[0], argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.command(args)
    except CommandError as error:
        print(f"embsvd {args.group}: {redact_text(str(error))}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="embsvd",
        description="Run embsvd's jobs, sweeps and figures, and work on its tracking store.",
        epilog="`embsvd run --help` and `embsvd figures --help` show Hydra's help and the "
        "config groups; docs/sweeps.md#command-line has examples.",
    )
    groups = top.add_subparsers(
        dest="group", required=True, metavar="{run,figures,sweeps,export,ui,server,runs}"
    )
    for name, hydra_app in app.APPS.items():  # listed here; main() hands them to Hydra
        groups.add_parser(
            name,
            add_help=False,
            help=f"{hydra_app.help}: experiments/{name}.py's Hydra app (the same overrides)",
        )

    sweeps = groups.add_parser(
        "sweeps",
        help="the store's sweeps, newest first: id, status, start, runs by status",
        description="List the sweeps (parent runs, tag embsvd.role=sweep) of the store, "
        "newest first: the sweep id (what sweep.sweep_id= and `embsvd export` take), its "
        "parent run, the parent's status and start time (local), and its runs by status "
        "(a resumed sweep's reused runs count as its own). A `*` marks the sweep that "
        "`embsvd figures` draws without a selection: the latest with a FINISHED run and "
        "no run still going.",
    )
    store_options(sweeps, experiment=None)
    sweeps.add_argument(
        "-n",
        "--limit",
        type=int,
        default=SWEEPS_SHOWN,
        help="list at most this many (default: %(default)s; 0: all)",
    )
    sweeps.set_defaults(command=sweeps_command)

    export = groups.add_parser(
        "export",
        help="every run of a sweep as one table (CSV or Parquet)",
        description="Write one tidy table of a sweep's runs, one row per run (every status; "
        "the parent left out): sweep_id, run_id, run_name, experiment, status, start_time, "
        "end_time (UTC), reused, then metrics.<key> (latest values; step series such as "
        "singular_value are left out), params.<key> and tags.<key>.",
    )
    export.add_argument("sweep", metavar="SWEEP", help="a sweep id or its parent run's id")
    store_options(export, experiment=None)
    export.add_argument(
        "--format",
        choices=tracking.EXPORT_FORMATS,
        help="default: parquet for an --output ending in .parquet, else csv",
    )
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write (default: <sweep id>.<format> in the working directory; "
        "'-': CSV to stdout)",
    )
    export.add_argument(
        "--replicates",
        action="append",
        default=[],
        metavar="KEY[,KEY...]",
        help="pool the FINISHED runs that differ only in these params (e.g. "
        "analysis.random_state): one row per configuration, each metric as "
        "metrics.<key>.mean, .lo, .hi (95%% t interval) and .n; repeatable",
    )
    export.set_defaults(command=export_command)

    ui = groups.add_parser(
        "ui",
        help="the MLflow UI on the store, at http://127.0.0.1:PORT",
        description="Start the MLflow UI (`mlflow ui`) on the store, listening on 127.0.0.1 "
        "only: the UI can change and delete runs, and has no login. Ctrl-C stops it. "
        "Options after `--` go to `mlflow ui` (e.g. -- --workers 1). A tracking server's "
        "store is not opened: the server serves its own UI, whose address is printed.",
    )
    store_options(ui, experiment=False)
    ui.add_argument("--port", type=int, default=UI_PORT, help="default: %(default)s")
    ui.add_argument(
        "mlflow_options", nargs="*", metavar="OPTION", help="after --: options of `mlflow ui`"
    )
    ui.set_defaults(command=ui_command)

    server_parser(groups)

    runs = groups.add_parser("runs", help="the runs of a tracking store: reconcile")
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
    store_options(reconcile, experiment=tracking.DEFAULT_EXPERIMENT)
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


def store_options(command: argparse.ArgumentParser, experiment: str | None | bool) -> None:
    """``--tracking-uri``, and ``--experiment`` (default ``experiment``; ``False``: none)."""
    command.add_argument(
        "--tracking-uri",
        help="the store (default as experiments/run.py: $MLFLOW_TRACKING_URI, else "
        "mlruns/mlflow.db of the project: the nearest folder up from here with "
        "conf/config.yaml)",
    )
    if experiment is False:
        return
    command.add_argument(
        "--experiment",
        default=experiment,
        help="the experiment whose runs to use (default: "
        + ("%(default)s)" if experiment else "every experiment)"),
    )


def store_uri(args: argparse.Namespace) -> str:
    """The store the command works on; a sqlite store must exist (nothing is created)."""
    uri = tracking.resolve_tracking_uri(args.tracking_uri, project_for_store)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise CommandError(
            f"--tracking-uri {redact_text(uri)}: no such sqlite database; pass the store's URI"
        )
    return uri


def project_for_store() -> Path:
    """The project whose ``mlruns/`` holds the default store."""
    project = app.find_project()
    if project is None:
        raise CommandError(
            f"{app.no_project_message()}; or name the store with --tracking-uri (or "
            "MLFLOW_TRACKING_URI)"
        )
    return project


def sweeps_command(args: argparse.Namespace) -> int:
    uri = store_uri(args)
    try:
        found = tracking.list_sweeps(uri, args.experiment, args.limit or None)
    except ValueError as error:  # no such experiment: the message lists those there are
        raise CommandError(str(error)) from error
    shown = redact_text(uri)
    if not found:
        where = f"experiment {args.experiment}" if args.experiment else shown
        print(f"no sweep in {where}: start one with `embsvd run -m ...`")
        return 0
    drawn = next((s for s in found if s.not_drawable() is None), None)
    print(sweeps_table(found, drawn))
    more = " (--limit 0 lists all)" if args.limit and len(found) == args.limit else ""
    print(f"{plural(len(found), 'sweep')} in {shown}, newest first{more}")
    if drawn is not None:
        print(
            f"* what `embsvd figures` draws without a selection: {drawn.label}, the latest "
            "sweep with a FINISHED run and no run still going"
        )
    return 0


def sweeps_table(found: list[tracking.SweepSummary], drawn: tracking.SweepSummary | None) -> str:
    """The listing: one line per sweep; the counts are columns a reader's eye runs down."""
    header = ["", "sweep id", "parent run", "status", "started", *COUNTED, "experiment"]
    rows = [
        [
            "*" if s is drawn else "",
            s.sweep_id or "-",
            s.parent_run_id,
            s.status,
            started(s.start_time),
            *(str(s.count(status)) for status in COUNTED),
            s.experiment,
        ]
        for s in found
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    counts = range(5, 5 + len(COUNTED))  # right-aligned
    lines = [
        "  ".join(
            (cell.rjust(width) if i in counts else cell.ljust(width))
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


COUNTED = ("FINISHED", "FAILED", "KILLED", "RUNNING")  # a sweep's runs by status


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def started(start_time: int | None) -> str:
    if start_time is None:
        return "-"
    return datetime.fromtimestamp(start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")


def export_command(args: argparse.Namespace) -> int:
    file_format = args.format or (
        "parquet" if args.output and args.output.endswith(".parquet") else "csv"
    )
    if args.output == "-" and file_format != "csv":
        raise CommandError("--output -: only CSV goes to stdout; name a file for Parquet")
    uri = store_uri(args)
    try:
        table = tracking.sweep_table(uri, args.sweep, args.experiment)
    except ValueError as error:  # no such sweep: the message lists the latest ones
        raise CommandError(str(error)) from error
    frame = table.frame
    if args.replicates:
        return export_pooled(args, table, file_format)
    counted = {
        p: sum(c.startswith(f"{p}.") for c in frame.columns) for p in tracking.COLUMN_PREFIXES
    }
    summary = (
        f"{plural(len(frame), 'run')} of sweep {table.sweep.describe()}, "
        f"{len(frame.columns)} columns: "
        + ", ".join(f"{n} {prefix}" for prefix, n in counted.items())
        + (f"; step series left out: {', '.join(table.series)}" if table.series else "")
    )
    if args.output == "-":
        try:
            frame.to_csv(sys.stdout, index=False)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped (`| head`): it had what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no 2nd error
            return 0
        print(summary, file=sys.stderr)
        return 0
    output = Path(args.output or f"{table.sweep.label}.{file_format}")
    if output.is_dir():
        raise CommandError(f"--output {output}: a folder; name the file to write")
    if not output.parent.resolve().is_dir():
        raise CommandError(f"--output {output}: no such folder {output.parent}")
    tracking.write_table(frame, output, file_format)
    print(f"{output}: {summary}")
    return 0


def export_pooled(args: argparse.Namespace, table: tracking.SweepTable, file_format: str) -> int:
    """``embsvd export --replicates``: the sweep's configurations, replicates pooled."""
    keys = [key.strip() for given in args.replicates for key in given.split(",") if key.strip()]
    try:
        pooled = tracking.pooled_table(table, keys)
    except ValueError as error:  # a key no run logged, repeats: the message names them
        raise CommandError(str(error)) from error
    sizes = sorted({int(n) for n in pooled.frame["n"]})
    summary = (
        f"{plural(len(pooled.frame), 'configuration')} of sweep {table.sweep.describe()}, "
        f"{plural(pooled.n_runs, 'FINISHED run')} pooled over {', '.join(pooled.keys)} "
        f"(n={', '.join(map(str, sizes))})"
        + (f"; left out: {', '.join(pooled.left_out)}" if pooled.left_out else "")
    )
    if args.output == "-":
        pooled.frame.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
        print(summary, file=sys.stderr)
        return 0
    output = Path(args.output or f"{table.sweep.label}.replicates.{file_format}")
    if output.is_dir() or not output.parent.resolve().is_dir():
        raise CommandError(f"--output {output}: name a file in an existing folder")
    tracking.write_table(pooled.frame, output, file_format)
    print(f"{output}: {summary}")
    return 0


def ui_command(args: argparse.Namespace) -> int:
    uri = store_uri(args)
    if uri.startswith(SERVER_SCHEMES):
        print(f"the store is a tracking server: open {mlflow_ui_command(uri)}, its own UI")
        return 0
    if any(o == "-h" or o.startswith("--host") for o in args.mlflow_options):
        raise CommandError(
            "the UI listens on 127.0.0.1 only: it has no login, and whoever reaches it can "
            "change and delete runs. Reach it from elsewhere through SSH (ssh -N -L "
            "5000:127.0.0.1:5000 <host>), or serve the store with a password "
            "(embsvd server: docs/sweeps.md#a-shared-tracking-server)"
        )
    options = list(args.mlflow_options)
    print(f"MLflow UI on {redact_text(uri)}: http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    print(f"$ {shlex.join(ui_argv(redact_text(uri), args.port) + options)}")
    sys.stdout.flush()
    sys.stderr.flush()
    command = ui_argv(uri, args.port) + options
    os.execv(command[0], command)  # the UI takes this process: Ctrl-C and kill reach it
    return 0  # not reached


def server_parser(groups: argparse._SubParsersAction) -> None:
    serve = groups.add_parser(
        "server",
        help="a shared MLflow server: a database store, proxied artifacts, basic auth",
        description="Start `mlflow server` the way a lab runs one: the backend store in a "
        "database (PostgreSQL), artifacts proxied from one folder (workers need no access to "
        "it), MLflow's basic-auth app with the admin's password from "
        "EMBSVD_SERVER_ADMIN_PASSWORD. Each option defaults to EMBSVD_SERVER_<OPTION> in the "
        "environment (e.g. EMBSVD_SERVER_BACKEND_URI), then to the value shown. "
        "docs/sweeps.md#a-shared-tracking-server has the recipe.",
    )
    serve.add_argument("--backend-uri", help="postgresql://user:password@host:port/database")
    serve.add_argument("--artifacts", help="artifact folder (default: mlruns/server-artifacts)")
    serve.add_argument("--state", help="auth config and users' database (default: mlruns/server)")
    serve.add_argument("--host", help="default: 127.0.0.1 (0.0.0.0: every interface)")
    serve.add_argument("--port", help=f"default: {server.DEFAULT_PORT}")
    serve.add_argument("--workers", help=f"default: {server.DEFAULT_WORKERS}")
    serve.add_argument("--allowed-hosts", help="names clients use (MLflow checks Host)")
    serve.add_argument(
        "--auth-cache-s",
        help=f"seconds a verified login is remembered (default: {server.DEFAULT_AUTH_CACHE_S})",
    )
    serve.set_defaults(command=server_command)


def server_command(args: argparse.Namespace) -> int:
    options = {
        key: getattr(args, key)
        for key in ("backend_uri", "artifacts", "state", "host", "port", "workers")
    }
    options["allowed_hosts"] = args.allowed_hosts
    options["auth_cache_s"] = args.auth_cache_s
    try:
        settings = server.settings_from(options, os.environ, app.find_project() or Path.cwd())
    except server.ServerSettingsError as error:
        raise CommandError(str(error)) from error
    environment = {**os.environ, **server.prepare_state(settings)}
    for line in server.describe(settings):
        print(line)
    sys.stdout.flush()
    command = server.server_argv(settings)
    os.execve(command[0], command, environment)  # Ctrl-C and kill reach the server itself
    return 0  # not reached


def ui_argv(uri: str, port: int) -> list[str]:
    """``mlflow ui`` on ``uri`` at 127.0.0.1:``port``, as ``report.mlflow_ui_command``
    prints it; with this Python's ``-m mlflow`` where its environment has no ``mlflow``
    script (a library installed into another environment's site-packages)."""
    script = Path(sys.prefix) / "bin" / "mlflow"
    mlflow = [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]
    return [*mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]


def reconcile_command(args: argparse.Namespace) -> int:
    uri = store_uri(args)
    shown = redact_text(uri)
    replayed: list[str] = []
    try:
        store = tracking.TrackingStore(uri, args.experiment, create=False, report=replayed.append)
    except ValueError as error:  # no such experiment: the message lists those there are
        raise CommandError(f"--experiment {args.experiment}: {error}") from error
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


if __name__ == "__main__":
    sys.exit(main())
