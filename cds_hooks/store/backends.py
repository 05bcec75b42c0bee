"""The two databases behind ``Store``: an SQLite file (embedded default) and PostgreSQL (a fleet).

Each backend hands out a connection for one unit of work and knows its SQL dialect. The store's SQL
is written once, with ``?`` placeholders and ``{now}`` for the database's clock in epoch seconds;
``Dialect.sql`` adapts it. Failures become :class:`StoreUnavailable` (503), never a bare driver error,
and the next call opens a fresh connection (a database that was read-only or restarted recovers
without a process restart).
"""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cds_hooks.errors import CdsHooksError


class StoreUnavailable(CdsHooksError):
    """The database cannot be read or written now (503); the message names what failed, never a value."""

    status = 503
    code = "store-unavailable"
    issue_code = "transient"


@dataclass(frozen=True)
class Dialect:
    name: str
    now: str                    # SQL expression: the database's clock, epoch seconds

    def sql(self, text: str) -> str:
        text = text.replace("{now}", self.now)
        return text.replace("?", "%s") if self.name == "postgresql" else text


SQLITE = Dialect("sqlite", "((julianday('now') - 2440587.5) * 86400.0)")
POSTGRES = Dialect("postgresql", "extract(epoch from clock_timestamp())::double precision")


class SqliteBackend:
    """One SQLite file; a connection per thread, reopened after a failure or a fork.

    Reusing connections matters for latency: closing the last connection to a WAL database
    checkpoints and deletes the WAL file (~1 ms per call when every call opened its own).
    """

    dialect = SQLITE

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._created = False

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                             check_same_thread=False)   # autocommit
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _drop(self) -> None:
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass

    @contextmanager
    def connection(self, *, write_lock: bool = False) -> Iterator[Any]:
        """This thread's connection; ``write_lock`` wraps the work in ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
        if self._created and not self.path.exists():
            # deleted under a running service: writing on would silently lose everything from here on
            raise StoreUnavailable(f"the database file {self.path} has disappeared; this process stops "
                                   "taking work: restore the file or restart the service")
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or getattr(local, "db", None) is None:
            local.db, local.pid = self._open(), os.getpid()
        db = local.db
        try:
            if write_lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            else:
                yield db
        except sqlite3.Error as e:
            self._drop()     # the next call opens a fresh connection
            raise StoreUnavailable(f"{self.describe()} failed: {type(e).__name__}: {_first_line(e)}") from e

    def created(self) -> None:
        self._created = True

    def close(self) -> None:
        self._drop()


class PostgresBackend:
    """A PostgreSQL database through a psycopg 3 connection pool (connections checked, reopened)."""

    dialect = POSTGRES

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 5.0):
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as e:     # pragma: no cover - a dependency of the package
            raise StoreUnavailable("PostgreSQL needs psycopg: `pip install 'psycopg[binary]' psycopg-pool`") from e
        self.url = url
        self.timeout_s = timeout_s
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False, timeout=timeout_s,
                                   kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
                                   check=ConnectionPool.check_connection, name="cxr-cds")
        try:
            self.pool.open(wait=True, timeout=timeout_s)
        except Exception as e:
            raise StoreUnavailable(f"{self.describe()} cannot be reached: {type(e).__name__}; check "
                                   "CXR_CDS_DATABASE_URL and that the server is up") from e

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self.url)
        except Exception:
            return "PostgreSQL database"
        return f"PostgreSQL database {info.get('dbname', '?')} on {info.get('host', 'localhost')}:{info.get('port', 5432)}"

    @contextmanager
    def connection(self, *, write_lock: bool = False) -> Iterator[Any]:
        import psycopg

        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                if write_lock:
                    with conn.transaction():
                        yield conn
                else:
                    yield conn
        except (psycopg.Error, TimeoutError) as e:
            raise StoreUnavailable(f"{self.describe()} failed: {type(e).__name__}: {_first_line(e)}") from e
        except Exception as e:
            from psycopg_pool import PoolTimeout

            if isinstance(e, PoolTimeout):
                raise StoreUnavailable(f"{self.describe()}: no connection within {self.timeout_s} s") from e
            raise

    def created(self) -> None:
        pass

    def close(self) -> None:
        self.pool.close()


def _first_line(e: BaseException) -> str:
    """A driver message's first line (SQL errors never quote our parameters: they are bound)."""
    return (str(e).strip().splitlines() or [""])[0][:200]


def open_backend(target: str | Path, *, timeout_s: float = 10.0) -> SqliteBackend | PostgresBackend:
    """``postgresql://...`` (or ``postgres://``) -> PostgreSQL; anything else is an SQLite file path.

    ``timeout_s``: how long a call waits for a connection (PostgreSQL) or a lock (SQLite).
    """
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(text, timeout_s=timeout_s)
    return SqliteBackend(text, timeout_s=timeout_s)
