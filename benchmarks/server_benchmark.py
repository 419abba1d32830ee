"""A shared tracking server under load: runs per second of a 100-run sweep logged to a
PostgreSQL-backed ``embsvd server`` against a sqlite store, and a writer ramp (2, 4, 8, 16
processes at once, each logging full runs) with errors and write latency.

    bash tests/cluster/start_services.sh        # as root: PostgreSQL on 127.0.0.1
    .venv/bin/python benchmarks/server_benchmark.py [--writers 2,4,8,16] [--runs 5]
    .venv/bin/python benchmarks/server_benchmark.py --small   # as the tests run it

The PostgreSQL role comes from ``/var/lib/embsvd-cluster/env`` (``EMBSVD_CLUSTER_ENV``) or
``--postgres-uri``; each measurement gets a database of its own, dropped afterwards. A
"full run" is what a job of a 10-group sweep writes: 150 params, 150 tags, 1200 metric
values in batches and a small artifact, through embsvd's own writer (``tracked_run``).
Prints a table and writes ``server_benchmark.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_ENV = Path(os.environ.get("EMBSVD_CLUSTER_ENV", "/var/lib/embsvd-cluster/env"))
sys.path.insert(0, str(ROOT))

# One process of the ramp: logs ``n_runs`` full runs, each timed; prints one JSON line.
WRITER = r"""
import json, sys, time
from embsvd import tracking
uri, experiment, writer, n_runs, start = sys.argv[1:6]
store = tracking.TrackingStore(uri, experiment)
while time.time() < float(start):  # every writer starts at the same moment
    time.sleep(0.001)
latencies, errors = [], []
for i in range(int(n_runs)):
    began = time.perf_counter()
    try:
        with tracking.tracked_run(store, f"{writer}/{i}", {"writer": writer}) as run:
            run.log_params({f"p{j}": j for j in range(150)})
            run.set_tags({f"t{j}": j for j in range(150)})
            run.log_metrics([("singular_value", float(j), j) for j in range(1200)])
            run.log_text(f"{writer}/{i}", "who.txt")
    except Exception as error:  # counted, not fatal: the ramp reports how many
        errors.append(f"{type(error).__name__}: {error}"[:300])
    latencies.append(time.perf_counter() - began)
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_uri(given: str | None) -> str:
    if given:
        return given
    if not CLUSTER_ENV.is_file():
        raise SystemExit(
            f"no PostgreSQL settings at {CLUSTER_ENV}: run `bash tests/cluster/start_services.sh`"
            " as root, or pass --postgres-uri"
        )
    for line in CLUSTER_ENV.read_text().splitlines():
        if line.startswith("EMBSVD_CLUSTER_PG_URI="):
            return line.split("=", 1)[1]
    raise SystemExit(f"{CLUSTER_ENV} has no EMBSVD_CLUSTER_PG_URI")


def psql(uri: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as connection:
        connection.execute(statement)


def drop_database(role_uri: str, database: str) -> None:
    """Drop ``database`` once the server's connections are gone. Not ``WITH (FORCE)``:
    that would have to end an autovacuum worker too, which only a superuser may; a plain
    DROP makes autovacuum leave by itself."""
    import psycopg

    for _ in range(60):
        try:
            psql(role_uri, f'DROP DATABASE IF EXISTS "{database}"')
            return
        except psycopg.errors.ObjectInUse:  # the server's last connections are closing
            time.sleep(0.5)
    print(f"warning: database {database} still in use; drop it by hand", file=sys.stderr)


@contextlib.contextmanager
def server(role_uri: str, work: Path, workers: int, auth_cache_s: int) -> Iterator[dict]:
    """``embsvd server`` on a fresh database; yields its URL and a user's credentials."""
    database = f"embsvd_bench_{secrets.token_hex(4)}"
    psql(role_uri, f'CREATE DATABASE "{database}"')
    folder = Path(tempfile.mkdtemp(prefix="server-", dir=work))
    port, admin = free_port(), secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "EMBSVD_SERVER_BACKEND_URI": role_uri.rsplit("/", 1)[0] + f"/{database}",
        "EMBSVD_SERVER_ADMIN_PASSWORD": admin,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [sys.executable, "-m", "embsvd.pipeline.cli", "server", "--port", str(port)]
    command += ["--state", str(folder / "state"), "--artifacts", str(folder / "artifacts")]
    command += ["--workers", str(workers), "--auth-cache-s", str(auth_cache_s)]
    with open(folder / "server.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(process, url, folder / "server.log")
        user, password = "bench", secrets.token_urlsafe(18)
        create_user(url, admin, user, password)
        yield {"url": url, "user": user, "password": password}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)
        drop_database(role_uri, database)
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_health(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/health", timeout=2) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.25)
    raise SystemExit(f"the server did not answer in 180 s: {log.read_text()[-2000:]}")


def create_user(url: str, admin: str, user: str, password: str) -> None:
    import base64

    request = urllib.request.Request(
        url + "/api/2.0/mlflow/users/create",
        data=json.dumps({"username": user, "password": password}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"admin:{admin}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


def ramp_step(uri: str, n_writers: int, n_runs: int, env: dict) -> dict:
    """``n_writers`` processes logging ``n_runs`` full runs each, started together."""
    experiment = f"ramp_{n_writers}_{secrets.token_hex(3)}"
    from embsvd import tracking

    tracking.TrackingStore(uri, experiment)  # created once, as a sweep's callback does
    start = time.time() + 6 + 0.5 * n_writers  # after every process has imported mlflow
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, experiment, f"w{w}", str(n_runs), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(n_writers)
    ]
    outputs = [p.communicate(timeout=1800) for p in processes]
    wall = time.time() - start
    latencies, errors, crashed = [], [], 0
    for process, (out, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0 or not out.strip():
            crashed += 1
            errors.append(err.strip().splitlines()[-1] if err.strip() else "no output")
            continue
        report = json.loads(out.strip().splitlines()[-1])
        latencies += report["latencies"]
        errors += report["errors"]
    store = tracking.TrackingStore(uri, experiment)
    finished = [r for r in store.find_runs() if r.status == "FINISHED"]
    latencies.sort()
    return {
        "writers": n_writers,
        "runs": n_writers * n_runs,
        "finished": len(finished),
        "errors": len(errors),
        "crashed_writers": crashed,
        "error_examples": errors[:3],
        "wall_s": round(wall, 2),
        "runs_per_s": round(len(finished) / wall, 2) if wall > 0 else None,
        "latency_median_s": round(statistics.median(latencies), 3) if latencies else None,
        # nearest rank: the smallest latency at or above 95% of them
        "latency_p95_s": round(latencies[math.ceil(0.95 * len(latencies)) - 1], 3)
        if latencies
        else None,
    }


def sweep_runs_per_second(uri: str, work: Path, env: dict, small: bool) -> dict:
    """The benchmark's 100-run sweep (``analysis=fast``, figures off) logged to ``uri``."""
    from benchmarks.benchmark import case_configs, model_setup

    _, _, overrides = case_configs("sweep", small)
    _, model_overrides = model_setup(small, work)
    command = [sys.executable, str(ROOT / "experiments" / "run.py"), "-m", *model_overrides]
    command += [*overrides, "analysis=fast", f"tracking.uri={uri}", "tracking.experiment=sweep"]
    command += [f"hydra.sweep.dir={work / ('sweep-' + secrets.token_hex(3))}"]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed: {done.stderr[-3000:]}")
    from embsvd import tracking

    runs = [
        r
        for r in tracking.TrackingStore(uri, "sweep").find_runs()
        if r.status == "FINISHED" and "mlflow.parentRunId" in r.tags
    ]
    return {"runs": len(runs), "wall_s": round(wall, 2), "runs_per_s": round(len(runs) / wall, 2)}


def measure(
    role: str,
    *,
    small: bool = False,
    steps: list[int] | None = None,
    n_runs: int = 5,
    server_workers: int = 4,
    auth_cache_s: int = 60,
    sweep: bool = True,
) -> dict:
    """The ramp (``steps`` writers, ``n_runs`` full runs each) and the sweep on the server
    and on sqlite; ``small``: 2 writers x 1 run and the tiny sweep (the test suite's)."""
    steps = [2] if small else (steps or [2, 4, 8, 16])
    n_runs = 1 if small else n_runs
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
        "server_workers": server_workers,
        "auth_cache_s": auth_cache_s,
    }
    credentials = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {name: os.environ.get(name) for name in credentials}
    with tempfile.TemporaryDirectory(prefix="embsvd-server-bench-") as scratch:
        work = Path(scratch)
        try:
            with server(role, work, server_workers, auth_cache_s) as served:
                env = {
                    **os.environ,
                    "MLFLOW_TRACKING_USERNAME": served["user"],
                    "MLFLOW_TRACKING_PASSWORD": served["password"],
                    "MLFLOW_TRACKING_URI": "",
                    "PYTHONPATH": str(ROOT),
                }
                # this process creates each step's experiment
                os.environ.update({name: env[name] for name in credentials})
                report["ramp"] = [ramp_step(served["url"], n, n_runs, env) for n in steps]
                if sweep:
                    report["sweep_server"] = sweep_runs_per_second(served["url"], work, env, small)
        finally:
            for name, value in before.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value
        if sweep:
            sqlite = f"sqlite:///{work / 'mlflow.db'}"
            report["sweep_sqlite"] = sweep_runs_per_second(sqlite, work, dict(os.environ), small)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-uri", help="a role that may create databases")
    parser.add_argument("--writers", default="2,4,8,16", help="the ramp's steps")
    parser.add_argument("--runs", type=int, default=5, help="full runs per writer")
    parser.add_argument("--server-workers", type=int, default=4)
    parser.add_argument(
        "--auth-cache-s", type=int, default=60, help="embsvd server's remembered logins (0: off)"
    )
    parser.add_argument("--small", action="store_true", help="tiny sweep, ramp 2 x 1 run")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("server_benchmark.json"))
    args = parser.parse_args()
    report = measure(
        postgres_uri(args.postgres_uri),
        small=args.small,
        steps=[int(n) for n in args.writers.split(",")],
        n_runs=args.runs,
        server_workers=args.server_workers,
        auth_cache_s=args.auth_cache_s,
        sweep=not args.skip_sweep,
    )
    print_report(report)
    args.out.write_text(json.dumps(report, indent=2))


def print_report(report: dict) -> None:
    print(
        f"server benchmark, {report['date']}, {report['machine']}, "
        f"{report['server_workers']} server workers, auth cache {report['auth_cache_s']} s"
    )
    print("writers  runs  finished  errors  runs/s  median s  p95 s")
    for step in report["ramp"]:
        print(
            f"{step['writers']:>7}  {step['runs']:>4}  {step['finished']:>8}  "
            f"{step['errors']:>6}  {step['runs_per_s']:>6}  {step['latency_median_s']:>8}  "
            f"{step['latency_p95_s']:>5}"
        )
    for side in ("sweep_server", "sweep_sqlite"):
        if side in report:
            s = report[side]
            print(f"{side}: {s['runs']} runs in {s['wall_s']} s ({s['runs_per_s']} runs/s)")


if __name__ == "__main__":
    main()
