"""A sqlite store's journal (``tracking.sqlite_journal``): write-ahead by default, set when
a command opens the store, and folded back into ``mlflow.db`` when a process that wrote it
ends, so that the database file alone holds every run once the command is done; SQLite's
rollback journal one setting away; a store another process is using keeps its mode."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from embsvd.pipeline import run_job
from embsvd.tracking.journal import checkpoint, set_journal
from embsvd.tracking.store import TrackingStore
from tests.conftest import CONFIG_DIR
from tests.test_pipeline import job_config


def journal_mode(database: Path) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


def runs_in_a_copy(database: Path, folder: Path) -> dict[str, dict[str, float]]:
    """The runs (name -> metrics) of a copy of the database file alone, as a backup or a
    colleague would have it."""
    folder.mkdir()
    shutil.copyfile(database, folder / "mlflow.db")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_name: run.data.metrics for run in client.search_runs(experiments)}


def test_a_job_writes_its_store_ahead_and_the_rollback_journal_is_one_setting_away(
    tiny_bert, migrated_store_file, tmp_path
):
    modes = {}
    for journal in ("wal", "delete"):
        database = tmp_path / journal / "mlflow.db"
        database.parent.mkdir()
        shutil.copyfile(migrated_store_file, database)
        assert journal_mode(database) == "delete"  # SQLite's default, as MLflow makes it
        overrides = ["analysis=fast", "analysis.figures=false"]
        if journal == "delete":
            overrides.append("tracking.sqlite_journal=delete")
        run_job(job_config(tiny_bert, f"sqlite:///{database}", "journal", *overrides))
        modes[journal] = journal_mode(database)
    assert modes == {"wal": "wal", "delete": "delete"}
    with (
        initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"),
        pytest.raises(ConfigCompositionException) as refused,
    ):
        compose("config", overrides=["tracking.sqlite_journal=truncate"])
    assert "wal" in str(refused.value.__cause__) and "delete" in str(refused.value.__cause__)


def test_a_process_that_wrote_a_store_leaves_every_run_in_the_database_file(tmp_path):
    database = tmp_path / "store" / "mlflow.db"
    script = textwrap.dedent(
        f"""
        import gc

        from embsvd.tracking.runs import close_run, start_run
        from embsvd.tracking.store import TrackingStore

        store = TrackingStore("sqlite:///{database}", "journal", journal="wal")
        gc.freeze()  # as a job does (settle_heap): what is frozen is never collected
        for n in range(3):
            logger = start_run(store, f"run {{n}}", {{}})
            logger.log_metrics([("m", float(n), 0)])
            close_run(store, logger, "FINISHED")
        # MLflow's connections stay open to the end, and with them the log
        print(len((__import__("pathlib").Path("{database}-wal")).read_bytes()) > 0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "True"  # the runs were in the log while it wrote
    assert journal_mode(database) == "wal"
    assert not Path(f"{database}-wal").exists() or Path(f"{database}-wal").stat().st_size == 0
    assert runs_in_a_copy(database, tmp_path / "copy") == {
        f"run {n}": {"m": float(n)} for n in range(3)
    }


def test_a_checkpoint_puts_the_log_into_the_database(tmp_path):
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    assert set_journal(uri, "wal") == "wal"
    store = TrackingStore(uri, "journal")  # the database's own mode: kept
    assert store.journal == "wal"
    run = store.client.create_run(store.experiment_id, run_name="logged")
    store.client.log_metric(run.info.run_id, "m", 1.5)
    # MLflow holds its connection open: the run is in the log, not yet in the file
    assert runs_in_a_copy(database, tmp_path / "before") == {}
    assert checkpoint(str(database))
    assert runs_in_a_copy(database, tmp_path / "after") == {"logged": {"m": 1.5}}


def test_a_store_another_process_is_reading_keeps_its_mode(tmp_path):
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    with closing(sqlite3.connect(database)) as other:
        other.execute("CREATE TABLE t (x)")
        other.commit()
        other.execute("BEGIN")
        other.execute("SELECT * FROM t").fetchall()  # a read in progress: a shared lock
        assert set_journal(uri, "wal") == "delete"
        other.execute("COMMIT")
    assert set_journal(uri, "wal") == "wal"
    assert set_journal(uri, "delete") == "delete"  # back, once nobody else has it open
    assert set_journal(uri, None) == "delete"
    assert set_journal("http://127.0.0.1:5000", "wal") is None  # not a sqlite file
