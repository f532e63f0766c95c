"""The `sqlite` backend, the embedded default: one file under `data-dir`, nothing else to run.

Every operation is atomic inside a `BEGIN IMMEDIATE` transaction on one connection owned by one
thread, in WAL mode with `synchronous=FULL` by default, and is answered only after its COMMIT, so
a grant, a queue entry or a fencing counter that was answered is on disk and survives `kill -9`.
With `batch-processing`, writes that arrive while a commit is running share the next transaction
(group commit, up to `batch-size` of them, each in its own savepoint): one fsync for many.
Fencing counters live in their own table and are never deleted, so tokens keep growing across
restarts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sidecar.backends.base import Backend
from sidecar.backends.txn import Txn, TxnBackend
from sidecar.config import Settings
from sidecar.engine.model import Grant, Outcome, Owner, Priority, QueueSummary, Request
from sidecar.engine.policies import EdgeRef
from sidecar.engine.waitgraph import edges_in_queues
from sidecar.errors import Code, LockError, backend_unavailable
from sidecar.plugin import hookimpl
from sidecar.plugin.registry import Registry

T = TypeVar("T")

FILE_NAME = "locks.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    key TEXT PRIMARY KEY, owner_id TEXT NOT NULL, owner TEXT NOT NULL, token INTEGER NOT NULL,
    acquired_at REAL NOT NULL, lease_expires_at REAL, request_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS grants_by_owner ON grants(owner_id);
CREATE INDEX IF NOT EXISTS grants_by_lease ON grants(lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS fencing (key TEXT PRIMARY KEY, token INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, body TEXT NOT NULL, priority INTEGER NOT NULL,
    enqueued_at REAL NOT NULL, deadline REAL NOT NULL, promoted INTEGER NOT NULL,
    seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS requests_by_deadline ON requests(deadline);
CREATE INDEX IF NOT EXISTS requests_by_owner ON requests(owner_id);
CREATE INDEX IF NOT EXISTS requests_by_arrival ON requests(promoted, enqueued_at);
CREATE TABLE IF NOT EXISTS waits (
    key TEXT NOT NULL, score REAL NOT NULL, seq INTEGER NOT NULL, request_id TEXT NOT NULL,
    owner_id TEXT NOT NULL, PRIMARY KEY (key, score, seq));
CREATE INDEX IF NOT EXISTS waits_by_request ON waits(request_id);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id TEXT PRIMARY KEY, body TEXT NOT NULL, finished_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outcomes_by_time ON outcomes(finished_at);
"""

_GRANT_COLUMNS = "key, owner, token, acquired_at, lease_expires_at, request_id"


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a lock database written by an earlier version up to SCHEMA, in one transaction."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(waits)")}
    if "owner_id" not in columns:  # each wait keeps its owner since the deadlock sweep reads it
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE waits ADD COLUMN owner_id TEXT NOT NULL DEFAULT ''")
        db.execute(
            "UPDATE waits SET owner_id = coalesce("
            "(SELECT owner_id FROM requests WHERE requests.id = waits.request_id), '')"
        )
        db.execute("COMMIT")


def _grant(row: tuple[Any, ...]) -> Grant:
    key, owner, token, acquired_at, lease, request_id = row
    return Grant(key, Owner.from_json(json.loads(owner)), token, acquired_at, lease, request_id)


def _request(row: tuple[Any, ...]) -> Request:
    return Request.from_json(json.loads(row[0]))


class SqliteTxn(Txn):
    """The Txn primitives as SQL on a connection that is inside a transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # The rules read a key's grant several times per operation; one transaction owns this
        # object, and every write of a grant goes through it, so the cache cannot go stale.
        self._grants: dict[str, Grant | None] = {}

    def _one(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.db.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def grant_of(self, key: str) -> Grant | None:
        if key not in self._grants:
            row = self._one(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE key = ?", key)
            self._grants[key] = _grant(row) if row else None
        return self._grants[key]

    def put_grant(self, grant: Grant) -> None:
        self._grants[grant.key] = grant
        self.db.execute(
            "INSERT OR REPLACE INTO grants VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                grant.key,
                grant.owner.id,
                json.dumps(grant.owner.to_json()),
                grant.token,
                grant.acquired_at,
                grant.lease_expires_at,
                grant.request_id,
            ),
        )

    def delete_grant(self, key: str) -> None:
        self._grants[key] = None
        self.db.execute("DELETE FROM grants WHERE key = ?", (key,))

    def next_token(self, key: str) -> int:
        row = self._one(
            "INSERT INTO fencing VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET token = token + 1"
            " RETURNING token",
            key,
        )
        assert row is not None
        return int(row[0])

    def last_token(self, key: str) -> int:
        row = self._one("SELECT token FROM fencing WHERE key = ?", key)
        return int(row[0]) if row else 0

    def next_seq(self) -> int:
        row = self._one(
            "INSERT INTO counters VALUES ('seq', 1) ON CONFLICT(name) DO UPDATE"
            " SET value = value + 1 RETURNING value",
        )
        assert row is not None
        return int(row[0])

    def queue_head(self, key: str) -> Request | None:
        row = self._one(
            "SELECT r.body FROM waits w JOIN requests r ON r.id = w.request_id WHERE w.key = ?"
            " ORDER BY w.score, w.seq LIMIT 1",
            key,
        )
        return _request(row) if row else None

    def queue_rank(self, key: str, score: float, seq: int) -> int:
        row = self._one(
            "SELECT count(*) FROM waits WHERE key = ? AND (score < ? OR (score = ? AND seq < ?))",
            key,
            score,
            score,
            seq,
        )
        return int(row[0]) if row else 0

    def queue_ahead(self, key: str, score: float, seq: int) -> Request | None:
        row = self._one(
            "SELECT r.body FROM waits w JOIN requests r ON r.id = w.request_id WHERE w.key = ?"
            " AND (w.score < ? OR (w.score = ? AND w.seq < ?)) ORDER BY w.score DESC, w.seq DESC"
            " LIMIT 1",
            key,
            score,
            score,
            seq,
        )
        return _request(row) if row else None

    def queue_of(self, key: str, limit: int) -> list[Request]:
        rows = self._all(
            "SELECT r.body FROM waits w JOIN requests r ON r.id = w.request_id WHERE w.key = ?"
            " ORDER BY w.score, w.seq LIMIT ?",
            key,
            limit,
        )
        return [_request(r) for r in rows]

    def add_request(self, request: Request) -> None:
        self.db.execute(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request.id,
                request.owner.id,
                json.dumps(request.to_json()),
                int(request.priority),
                request.enqueued_at,
                request.deadline,
                int(request.promoted),
                request.seq,
            ),
        )
        self.db.executemany(
            "INSERT INTO waits (key, score, seq, request_id, owner_id) VALUES (?, ?, ?, ?, ?)",
            [
                (key, request.score, request.seq, request.id, request.owner.id)
                for key in request.keys
            ],
        )

    def remove_request(self, request_id: str) -> Request | None:
        request = self.get_request(request_id)
        if request is not None:
            self.db.execute("DELETE FROM requests WHERE id = ?", (request_id,))
            self.db.execute("DELETE FROM waits WHERE request_id = ?", (request_id,))
        return request

    def get_request(self, request_id: str) -> Request | None:
        row = self._one("SELECT body FROM requests WHERE id = ?", request_id)
        return _request(row) if row else None

    def waiting_count(self) -> int:
        row = self._one("SELECT count(*) FROM requests")
        return int(row[0]) if row else 0

    def waiting(self, limit: int) -> list[Request]:
        return [
            _request(r) for r in self._all("SELECT body FROM requests ORDER BY seq LIMIT ?", limit)
        ]

    def wait_graph(self, limit: int) -> list[EdgeRef]:
        # Ids straight from the indexed columns, in queue order: no request body is decoded.
        cutoff = self._one("SELECT seq FROM requests ORDER BY seq LIMIT 1 OFFSET ?", limit)
        rows = self._all(
            "SELECT w.key, w.request_id, w.owner_id, g.owner_id FROM waits w"
            " LEFT JOIN grants g ON g.key = w.key WHERE w.seq < ? ORDER BY w.key, w.score, w.seq",
            cutoff[0] if cutoff else 2**63 - 1,
        )
        return edges_in_queues(rows)

    def grants_of_owner(self, owner_id: str) -> list[Grant]:
        rows = self._all(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE owner_id = ?", owner_id)
        return [_grant(r) for r in rows]

    def requests_of_owner(self, owner_id: str) -> list[Request]:
        return [
            _request(r) for r in self._all("SELECT body FROM requests WHERE owner_id = ?", owner_id)
        ]

    def expired_leases(self, now: float, limit: int) -> list[Grant]:
        rows = self._all(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE lease_expires_at IS NOT NULL"
            " AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?",
            now,
            limit,
        )
        return [_grant(r) for r in rows]

    def expired_requests(self, now: float, limit: int) -> list[Request]:
        rows = self._all(
            "SELECT body FROM requests WHERE deadline <= ? ORDER BY deadline LIMIT ?", now, limit
        )
        return [_request(r) for r in rows]

    def unpromoted_enqueued_before(self, moment: float, limit: int) -> list[Request]:
        rows = self._all(
            "SELECT body FROM requests WHERE promoted = 0 AND enqueued_at < ?"
            " ORDER BY enqueued_at LIMIT ?",
            moment,
            limit,
        )
        return [_request(r) for r in rows]

    def record_outcome(self, outcome: Outcome) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?)",
            (outcome.request_id, json.dumps(outcome.to_json()), outcome.finished_at),
        )

    def get_outcome(self, request_id: str) -> Outcome | None:
        row = self._one("SELECT body FROM outcomes WHERE request_id = ?", request_id)
        return Outcome.from_json(json.loads(row[0])) if row else None

    def prune_outcomes(self, finished_before: float, limit: int) -> int:
        cursor = self.db.execute(
            "DELETE FROM outcomes WHERE request_id IN (SELECT request_id FROM outcomes"
            " WHERE finished_at < ? ORDER BY finished_at LIMIT ?)",
            (finished_before, limit),
        )
        return cursor.rowcount

    def list_grants(
        self, owner_id: str | None, prefix: str | None, after_key: str | None, limit: int
    ) -> list[Grant]:
        where, args = ["1"], []
        if owner_id is not None:
            where.append("owner_id = ?")
            args.append(owner_id)
        if prefix:
            # Range instead of LIKE: keys may contain % and _, and the range uses the index.
            where.append("key >= ? AND key < ?")
            args += [prefix, prefix + "\U0010ffff"]
        if after_key is not None:
            where.append("key > ?")
            args.append(after_key)
        rows = self._all(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE {' AND '.join(where)} ORDER BY key LIMIT ?",
            *args,
            limit,
        )
        return [_grant(r) for r in rows]

    def queue_summary(self) -> QueueSummary:
        by_priority = {
            Priority(p).label: n
            for p, n in self._all("SELECT priority, count(*) FROM requests GROUP BY priority")
        }
        row = self._one("SELECT count(*), min(enqueued_at) FROM requests")
        keys = self._one("SELECT count(DISTINCT key) FROM waits")
        depth, oldest = (row[0], row[1]) if row else (0, None)
        return QueueSummary(int(depth), by_priority, oldest, int(keys[0]) if keys else 0)

    def all_grants(self) -> list[Grant]:
        return [_grant(r) for r in self._all(f"SELECT {_GRANT_COLUMNS} FROM grants")]


class SqliteBackend(TxnBackend):
    name = "sqlite"
    durable = True

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        group_commit: int = 1,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.group_commit = max(1, group_commit)
        self._pending: deque[_Pending] = deque()
        #: Write transactions committed; with group commit, fewer than write operations.
        self.commits = 0
        # One thread owns the connection: operations are serialised and never block the loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-backend")
        self._db: sqlite3.Connection | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Backend:
        return cls(
            settings.data_path / FILE_NAME,
            synchronous=settings.sqlite.synchronous,
            busy_timeout=settings.sqlite.busy_timeout,
            group_commit=settings.batch_size if settings.batch_processing else 1,
        )

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "path": str(self.path),
            "synchronous": self.synchronous,
            "group_commit": self.group_commit,
        }

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
                raise PermissionError(f"cannot read and write {self.path}")
            db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous}")
                db.execute("BEGIN IMMEDIATE")
                db.executescript(SCHEMA)  # executescript commits the open transaction
                _upgrade(db)
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            raise LockError(
                Code.PERMISSION_DENIED,
                f"cannot open the sqlite backend at {self.path}: {exc}",
                path=str(self.path),
            ) from exc
        self._db = db

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self.run(lambda tx: tx.waiting_count(), write=False)

    def _read(self, fn: Callable[[Txn], T]) -> T:
        db = self._connection()
        try:
            db.execute("BEGIN")
            try:
                return fn(SqliteTxn(db))
            finally:
                db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise backend_unavailable(f"sqlite {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise backend_unavailable(f"sqlite database {self.path} is not open")
        return self._db

    def _commit_pending(self) -> None:
        """Run every pending write (up to `group_commit`) in one transaction, then answer them.

        Each operation of a shared transaction runs in its own savepoint, so one that fails is
        undone alone and the rest still commit; none is answered before the COMMIT (and its
        fsync) is done.
        """
        batch: list[_Pending] = []
        while self._pending and len(batch) < self.group_commit:
            batch.append(self._pending.popleft())
        if not batch:
            return
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                if len(batch) == 1:  # alone in its transaction: no savepoint needed
                    outcomes.append(_run_op(db, batch[0].fn, self.path))
                    if outcomes[0][1] is not None:
                        raise outcomes[0][1]
                else:
                    for item in batch:
                        outcomes.append(_in_savepoint(db, item.fn, self.path))
                db.execute("COMMIT")
                self.commits += 1
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            failed = backend_unavailable(f"sqlite {self.path}: {exc}")
            outcomes = [(None, failed)] * len(batch)
        except Exception as exc:
            outcomes = [(None, exc)] * len(batch)
        finally:
            # Whatever happened, every caller gets an answer (also on KeyboardInterrupt).
            if len(outcomes) != len(batch):
                gone = backend_unavailable(f"sqlite {self.path}: the transaction was interrupted")
                outcomes = [(None, gone)] * len(batch)
            for item, (result, error) in zip(batch, outcomes, strict=True):
                item.loop.call_soon_threadsafe(_settle, item.future, result, error)

    async def run(self, fn: Callable[[Txn], T], *, write: bool = True) -> T:
        loop = asyncio.get_running_loop()
        if not write:
            return await loop.run_in_executor(self._executor, self._read, fn)
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Pending(fn, future, loop))
        # Every write schedules a drain; a drain that finds nothing pending returns at once.
        # Writes that arrive while a commit is running share the next transaction.
        self._executor.submit(self._commit_pending)
        return await future


@dataclass(slots=True)
class _Pending:
    fn: Callable[[Txn], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _run_op(
    db: sqlite3.Connection, fn: Callable[[Txn], Any], path: Path
) -> tuple[Any, BaseException | None]:
    try:
        return fn(SqliteTxn(db)), None
    except sqlite3.Error as exc:
        return None, backend_unavailable(f"sqlite {path}: {exc}")
    except Exception as exc:
        return None, exc


def _in_savepoint(
    db: sqlite3.Connection, fn: Callable[[Txn], Any], path: Path
) -> tuple[Any, BaseException | None]:
    db.execute("SAVEPOINT op")
    result, error = _run_op(db, fn, path)
    db.execute("ROLLBACK TO op" if error is not None else "RELEASE op")
    if error is not None:
        db.execute("RELEASE op")
    return result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away; the operation still happened
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@hookimpl
def atlantis_sidecar_register_backends(registry: Registry[type[Backend]]) -> None:
    registry.register(SqliteBackend.name, SqliteBackend)
