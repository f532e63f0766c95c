"""Redis clients for the three modes, and the bounded retry every command goes through.

- standalone: `host`/`port`/`db`;
- Sentinel: `sentinel.nodes` + `sentinel.master-name` (the client asks the sentinels for the
  current master and follows fail-overs);
- Cluster: `cluster-nodes` as seeds (the client follows the slot map and MOVED redirects).

Every call runs with the configured timeouts - `dial-timeout` bounds opening a connection, and each
attempt as a whole is bounded by `dial-timeout` + `write-timeout` + `read-timeout` - and is retried
at most `max-retries` times on connection errors, after `retry-delay`, doubling, each retry logged
as "connection retry". Then it fails with EL001. redis-py's own socket timeout is left unset on
purpose: under Python 3.11 it sends through `asyncio.wait_for`, which can swallow the
cancellation of the calling task (a sweeper being stopped would run on); a `Watchdog` bounds the
whole attempt instead. redis-py's own retries are switched off so that this is the only retry
loop. Authentication
failures are not retried (they cannot heal by themselves) and say what to check. Passwords never
appear in a message: redis-py's errors do not contain them and we never format the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from plugins.backends.redis.pushes import Subscription
from plugins.backends.redis.resp import Prefix, bulk
from plugins.backends.redis.topology import describe, mode_of, where
from sidecar.config import RedisSettings
from sidecar.config.checks import split_host_port
from sidecar.errors import Code, LockError

log = logging.getLogger("enhanced-locking.redis")

T = TypeVar("T")
Client = Redis | RedisCluster

#: Errors after which the same command may work a moment later (a restart, a fail-over, a
#: node loading its data, a cluster re-electing a master).
RETRYABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    TimeoutError,
    OSError,
    rex.ReadOnlyError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.MasterDownError,
    rex.SlotNotCoveredError,
    rex.RedisClusterException,
)
AUTH_ERRORS: tuple[type[BaseException], ...] = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.AuthenticationWrongNumberOfArgsError,
)


def tls_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """redis-py's TLS arguments for the `redis.tls*` settings (none when TLS is off)."""
    if not settings.tls:
        return {}
    skip = settings.tls_insecure_skip_verify
    return {
        "ssl": True,
        "ssl_ca_certs": settings.tls_ca_file or None,
        "ssl_cert_reqs": "none" if skip else "required",
        "ssl_check_hostname": not skip,
    }


def _connection_kwargs(settings: RedisSettings, client_name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": settings.username or None,
        "password": settings.password or None,
        "socket_connect_timeout": settings.dial_timeout,
        "socket_timeout": None,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "client_name": client_name,
        "decode_responses": False,
    }
    kwargs.update(tls_kwargs(settings))
    return kwargs


def build_client(settings: RedisSettings, client_name: str) -> tuple[Client, list[Redis]]:
    """A client for the configured mode (it connects lazily, on the first command), and the
    clients of the sentinels it asks, which must be closed too."""
    kwargs = _connection_kwargs(settings, client_name)
    # One connection more than the command slots, for the pub/sub subscriber.
    max_connections = settings.pool_size + 1
    mode = mode_of(settings)
    if mode == "cluster":
        nodes = [ClusterNode(*split_host_port(n)) for n in settings.cluster_nodes]
        cluster = RedisCluster(
            startup_nodes=nodes,
            max_connections=max_connections,
            require_full_coverage=False,
            **kwargs,
        )
        return cluster, []
    if mode == "sentinel":
        sentinel_kwargs = {
            "socket_connect_timeout": settings.dial_timeout,
            "socket_timeout": None,
            "retry": Retry(NoBackoff(), 0),
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [split_host_port(n) for n in settings.sentinel.nodes],
            sentinel_kwargs=sentinel_kwargs,
            **kwargs,
        )
        client: Redis = sentinel.master_for(
            settings.sentinel.master_name, db=settings.db, max_connections=max_connections
        )
        return client, list(sentinel.sentinels)
    standalone = Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        max_connections=max_connections,
        **kwargs,
    )
    return standalone, []


def auth_failed(settings: RedisSettings, exc: BaseException) -> LockError:
    user = settings.username or "default"
    how = "with a password" if settings.password else "without a password"
    return LockError(
        Code.BACKEND_UNAVAILABLE,
        f"redis authentication failed at {where(settings)} for user {user!r} ({how}): {exc}"
        " - check redis.username and redis.password",
        reason="authentication",
    )


def unreachable(settings: RedisSettings, exc: BaseException, attempts: int) -> LockError:
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return LockError(
        Code.BACKEND_UNAVAILABLE,
        f"backend connection failed: redis at {where(settings)} unreachable after {tries}:"
        f" {describe(exc)}",
        reason="unreachable",
    )


_FUNCTION_LOAD = Prefix.of("FUNCTION", "LOAD", "REPLACE")
_PING = b"*1\r\n$4\r\nPING\r\n"


class Connection:
    """The client plus the rules every call follows: a bounded number at once, bounded retries.

    At most `pool-size` commands run at once; the others wait (up to `dial-timeout`) for a slot
    instead of failing with "too many connections".
    """

    # Errors callers tell apart, here so that they need not import redis-py.
    NoScriptError = rex.NoScriptError
    ResponseError = rex.ResponseError
    NoPermissionError = rex.NoPermissionError

    def __init__(self, settings: RedisSettings, client_name: str) -> None:
        self.settings = settings
        self.mode = mode_of(settings)
        self.where = where(settings)
        self.client_name = client_name
        self.client, self._sentinels = build_client(settings, client_name)
        self._next_node = -1
        #: The bound of one attempt: connecting, sending and reading the answer.
        self.attempt_timeout = (
            settings.dial_timeout + settings.write_timeout + settings.read_timeout
        )
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._watchdog = Watchdog()
        self._idle: list[AbstractConnection] = []
        #: Whether a PING may go ahead of a command (command's `answer_last`); an ACL may refuse it.
        self._ping_ahead = True

    async def command(self, prefix: Prefix, *args: str | int, answer_last: bool = False) -> Any:
        """Send `prefix` + `args` as one command and read its answer.

        `answer_last`: Redis should write this answer after whatever the command publishes. It
        writes the answers of one event-loop turn to their connections last-come first, so a
        PING sent ahead in the same write puts this connection behind the subscribers the
        command then publishes to. A grant message then reaches the waiting replica before the
        releasing one wakes up to its answer: with two replicas and Redis on one 2-vCPU host,
        the handoff between them took 0.95x python-redis-lock's instead of 1.22x (median of 8
        interleaved rounds each). Not in Cluster mode, where redis-py sends the command.

        Standalone and Sentinel: written as RESP on a connection of our own (at most `pool-size`
        of them, reused), without redis-py's command layer: its retry wrapper, per-argument
        encoding, pool checkout and observability hooks cost more than half of our side of a
        call (measured), and we retry ourselves. The connection's own error handling stays: it
        disconnects on any failure mid-command (an answer is never left for the next caller) and
        reconnects on next use, asking the sentinels for the master again in Sentinel mode.
        Cluster: redis-py's client, which routes by slot and follows MOVED.
        """
        if isinstance(self.client, RedisCluster):
            return await self.client.execute_command(*prefix.args, *args)
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            packed = b"*%d\r\n%b%b" % (
                len(prefix.args) + len(args),
                prefix.packed,
                b"".join([bulk(a) for a in args]),
            )
            if not connection.is_connected:
                # connect(), not the send's own connect: Sentinel's connection asks for the
                # master in connect() only.
                await connection.connect()  # type: ignore[no-untyped-call]
            ping = answer_last and self._ping_ahead
            await connection.send_packed_command(
                _PING + packed if ping else packed, check_health=False
            )
            if ping:
                try:
                    await connection.read_response()  # PONG
                except rex.ResponseError as exc:
                    self._ping_ahead = False
                    log.info("redis refused the PING ahead of a call (%s): not sent again", exc)
            return await connection.read_response()
        finally:
            self._idle.append(connection)

    async def load_function(self, library: str) -> None:
        """FUNCTION LOAD REPLACE `library`: on every primary in Cluster mode."""
        if isinstance(self.client, RedisCluster):
            await self.client.function_load(library, replace=True)
        else:
            await self.command(_FUNCTION_LOAD, library)

    def _new_connection(self) -> AbstractConnection:
        assert not isinstance(self.client, RedisCluster)
        made: AbstractConnection = self.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return made

    async def _take_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            return
        try:
            async with asyncio.timeout(self.settings.dial_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise LockError(
                Code.BACKEND_UNAVAILABLE,
                f"backend connection failed: all {self.settings.pool_size} redis connections"
                f" stayed busy for {self.settings.dial_timeout:g}s (redis.pool-size)",
                reason="pool exhausted",
            ) from None

    async def _bounded(self, fn: Callable[[int], Awaitable[T]], attempt: int) -> T:
        """`fn(attempt)`, cancelled by the watchdog when it overruns `attempt_timeout`."""
        task = asyncio.current_task()
        assert task is not None
        self._watchdog.watch(task, self.attempt_timeout)
        try:
            return await fn(attempt)
        except asyncio.CancelledError:
            if self._watchdog.fired(task):
                raise TimeoutError(
                    f"no answer within {self.attempt_timeout:g}s"
                    " (dial-timeout + write-timeout + read-timeout)"
                ) from None
            raise
        finally:
            self._watchdog.forget(task)

    async def call(
        self, what: str, fn: Callable[[int], Awaitable[T]], *, retries: int | None = None
    ) -> T:
        """Run `fn(attempt)` (attempt 0, 1, ...) until it works or the retries are spent."""
        s = self.settings
        attempts = 1 + (s.max_retries if retries is None else retries)
        delay = s.retry_delay
        for attempt in range(attempts):
            try:
                await self._take_slot()
                try:
                    return await self._bounded(fn, attempt)
                finally:
                    self._slots.release()
            except AUTH_ERRORS as exc:
                raise auth_failed(s, exc) from None
            except rex.NoPermissionError as exc:
                raise LockError(
                    Code.BACKEND_UNAVAILABLE,
                    f"redis user {s.username or 'default'!r} at {self.where} may not run {what}:"
                    f" {exc} - grant it the commands of the lock scripts",
                    reason="permission",
                ) from None
            except RETRYABLE as exc:
                if attempt + 1 >= attempts:
                    raise unreachable(s, exc, attempts) from None
                log.warning(
                    "connection retry %d/%d to redis at %s in %.0f ms (%s failed: %s)",
                    attempt + 1,
                    attempts - 1,
                    self.where,
                    delay * 1000,
                    what,
                    describe(exc),
                )
                await asyncio.sleep(delay)
                delay *= 2
            except rex.RedisError as exc:
                raise LockError(
                    Code.BACKEND_UNAVAILABLE,
                    f"backend connection failed: redis at {self.where} refused {what}:"
                    f" {describe(exc)}",
                    reason="error",
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[Subscription]:
        """A connection of its own subscribed to `channel` (confirmed), closed on exit.

        redis-py's connection connects, authenticates and, with Sentinel, finds the master; the
        messages are then read off its stream by `pushes.Subscription`. In Cluster mode the
        connection goes to one node (each call tries the next): a PUBLISH on any node reaches
        the subscribers of every node.
        """
        node: Redis | None = None
        if isinstance(self.client, RedisCluster):
            nodes = [(n.host, int(n.port)) for n in self.client.get_nodes()] or [
                split_host_port(n) for n in self.settings.cluster_nodes
            ]
            self._next_node = (self._next_node + 1) % len(nodes)
            host, port = nodes[self._next_node]
            kwargs = _connection_kwargs(self.settings, self.client_name)
            node = Redis(host=host, port=port, **kwargs)
            connection: AbstractConnection = node.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        else:
            connection = self._new_connection()
        try:
            async with asyncio.timeout(self.attempt_timeout):
                await connection.connect()  # type: ignore[no-untyped-call]
                stream = getattr(connection, "_reader", None)
                if not isinstance(stream, asyncio.StreamReader):
                    raise rex.ConnectionError(
                        "this redis-py version hides the connection's stream; cannot subscribe"
                    )
                subscription = Subscription(stream, channel)
                await connection.send_command("SUBSCRIBE", channel)
                await subscription.confirmed()
            yield subscription
        finally:
            with contextlib.suppress(rex.RedisError, OSError):
                await connection.disconnect()
            if node is not None:
                with contextlib.suppress(rex.RedisError, OSError):
                    await node.aclose()

    async def close(self) -> None:
        await self._watchdog.stop()
        for connection in self._idle:
            with contextlib.suppress(rex.RedisError, OSError):
                await connection.disconnect()
        self._idle.clear()
        for client in [self.client, *self._sentinels]:
            with contextlib.suppress(rex.RedisError, OSError):
                await client.aclose()


class Watchdog:
    """Bounds running attempts by cancelling the task of one that overran its time.

    `asyncio.timeout` would do, but it arms a timer per attempt, which costs more than the rest
    of our side of a call (measured under uvloop: ~35 us of ~100). One check every `tick` for
    all attempts costs nothing per call; an attempt may overrun by up to `tick`. A task is only
    ever cancelled while it is inside its attempt (it is forgotten, synchronously, as it leaves),
    so the cancellation always lands there and becomes TimeoutError.
    """

    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self._due: dict[asyncio.Task[Any], float] = {}
        self._fired: set[asyncio.Task[Any]] = set()
        self._checker: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any], seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._due[task] = loop.time() + seconds
        if self._checker is None or self._checker.done():
            self._checker = loop.create_task(self._check(), name="redis-attempt-watchdog")

    def forget(self, task: asyncio.Task[Any]) -> None:
        self._due.pop(task, None)
        self._fired.discard(task)

    def fired(self, task: asyncio.Task[Any]) -> bool:
        """Whether the watchdog cancelled `task`; if so, the cancellation is taken back."""
        if task not in self._fired:
            return False
        self._fired.discard(task)
        task.uncancel()
        return True

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        while self._due:
            await asyncio.sleep(self.tick)
            now = loop.time()
            for task, due in list(self._due.items()):
                if due <= now and task not in self._fired:
                    self._fired.add(task)
                    task.cancel()

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
