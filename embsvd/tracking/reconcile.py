"""Runs left RUNNING by a process that is gone (SIGKILL, out of memory, a lost node),
closed from the tags their process wrote when it opened them (``embsvd runs reconcile``)."""

from __future__ import annotations

import socket
from collections.abc import Collection
from dataclasses import dataclass

from mlflow.entities import RunStatus

from embsvd.tracking import contract, recovery
from embsvd.tracking.contract import Tag
from embsvd.tracking.store import RunRecord, TrackingStore
from embsvd.tracking.sweeps import finish_sweep

ANY_HOST = "*"  # ``gone_hosts`` entry: every other host, and runs without process tags


@dataclass(frozen=True)
class Change:
    """What reconcile did with one RUNNING run: its new status, or ``RUNNING`` (left)."""

    run_id: str
    name: str
    status: str
    reason: str

    def __str__(self) -> str:
        verb = "left RUNNING" if self.status == "RUNNING" else f"closed {self.status}"
        return f"{verb}: run {self.run_id} ({self.name}): {self.reason}"


def reconcile_runs(
    store: TrackingStore, gone_hosts: Collection[str] = (), this_host: str | None = None
) -> list[Change]:
    """Close the experiment's RUNNING runs whose process is gone.

    A run's process is the one its tags ``embsvd.host``, ``embsvd.pid`` and
    ``embsvd.process_start`` name. On this host it is gone when no process has that pid,
    or the one that has it started at another time (a reused pid). On another host it
    cannot be checked from here: the run is left RUNNING unless that host is in
    ``gone_hosts`` (``"*"``: every other host, and runs without the tags). A closed run
    is KILLED with ``embsvd.error`` saying why. A sweep's parent is closed once its
    children are all final, with ``finish_sweep``'s status (an interrupted sweep:
    KILLED). A run whose final write waits in a pending folder is left for its replay.

    Returns:
        One ``Change`` per RUNNING run, children before parents.
    """
    this_host = this_host or socket.gethostname()
    running = store.find_runs("attributes.status = 'RUNNING'")
    waiting = {p.run_id: p for p in recovery.pending_writes(store.uri)}
    parents = [r for r in running if r.tags.get(Tag.ROLE) == contract.SWEEP_ROLE]
    changes = []
    for run in [r for r in running if r not in parents]:
        if run.run_id in waiting:
            pending = waiting[run.run_id]
            reason = f"its final write waits in {pending.folder} ({pending.reason})"
            changes.append(Change(run.run_id, run.name, "RUNNING", reason))
            continue
        gone, why = process_gone(run.tags, this_host, gone_hosts)
        if gone:
            _close_killed(store, run, why)
        changes.append(Change(run.run_id, run.name, "KILLED" if gone else "RUNNING", why))
    for parent in parents:
        if parent.run_id in waiting:
            reason = f"its final write waits in {waiting[parent.run_id].folder}"
            changes.append(Change(parent.run_id, parent.name, "RUNNING", reason))
        else:
            changes.append(_reconcile_parent(store, parent, this_host, gone_hosts))
    return changes


def _reconcile_parent(
    store: TrackingStore, parent: RunRecord, this_host: str, gone_hosts: Collection[str]
) -> Change:
    gone, why = process_gone(parent.tags, this_host, gone_hosts)
    if not gone:
        return Change(parent.run_id, parent.name, "RUNNING", why)
    running = [c.name for c in store.children(parent.run_id) if c.status == "RUNNING"]
    if running:
        why += f"; left until its children end ({len(running)} RUNNING: {', '.join(running)})"
        return Change(parent.run_id, parent.name, "RUNNING", why)
    store.client.set_tag(parent.run_id, Tag.ERROR, _error(why))
    outcome = finish_sweep(store, parent.run_id, interrupted=True, completed=False)
    return Change(parent.run_id, parent.name, outcome.status, why)


def process_gone(
    tags: dict[str, str], this_host: str, gone_hosts: Collection[str] = ()
) -> tuple[bool, str]:
    """Whether the process that wrote a run is gone, and why (or why it cannot tell)."""
    host, pid = tags.get(Tag.HOST), tags.get(Tag.PID)
    if host is None or pid is None:
        if ANY_HOST in gone_hosts:
            return True, f"no process tags, and --host-gone {ANY_HOST} was given"
        return False, (
            "no process tags (opened by an older embsvd): cannot tell whether its process "
            f"runs; pass --host-gone '{ANY_HOST}' once nothing writes to this store"
        )
    if host != this_host:
        if host in gone_hosts or ANY_HOST in gone_hosts:
            return True, f"its process (pid {pid} on {host}) is gone: {host} was given as gone"
        return False, (
            f"its process (pid {pid}) ran on {host}, which is not this host ({this_host}): "
            f"pass --host-gone {host} once its jobs there are gone (e.g. after scancel)"
        )
    if recovery.process_running(int(pid), tags.get(Tag.PROCESS_START)):
        return False, f"its process (pid {pid} on {host}) is still running"
    return True, f"its process (pid {pid} on {host}) is gone"


def _close_killed(store: TrackingStore, run: RunRecord, why: str) -> None:
    store.client.set_tag(run.run_id, Tag.ERROR, _error(why))
    store.client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))


def _error(why: str) -> str:
    return (
        f"left RUNNING, closed by embsvd runs reconcile: {why} (killed with SIGKILL, out of "
        "memory or a lost node; what it logged before is kept, its final writes are not)"
    )
