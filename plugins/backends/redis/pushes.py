"""The messages of one subscribed channel, read straight off the connection's stream.

redis-py's PubSub reads each message through its retry wrapper, its RESP parser (one await per
line) and a message dict; on the handoff path that was ~150 us between Redis writing a grant and
the waiting replica seeing it, of a handoff of ~600 us (measured with a publisher in another
process). Here each read of the socket is split into whole frames with `bytes.find`, and the
payloads of `message` pushes go to the caller as they come.

Only what a subscribed connection receives is understood: arrays (RESP2 `*`) or pushes (RESP3
`>`) of bulk strings and integers, and error lines. Anything else means the connection is not
what we think it is, and is treated as a broken connection (the subscriber reconnects).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis import exceptions as rex

#: Far above any message the scripts publish (a grant or an end of one request); a peer that
#: sends more than this without completing a frame is not a Redis we understand.
MAX_PENDING = 16 * 1024 * 1024
READ_SIZE = 64 * 1024

Item = bytes | int


class Frames:
    """Splits a byte stream into frames; `take` returns one whole frame or None (need more)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_PENDING:
            raise rex.ConnectionError(
                f"subscribed connection: more than {MAX_PENDING} bytes without a whole message"
            )

    def take(self) -> list[Item] | None:
        buf = self.buffer
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        kind = buf[0]
        if kind == ord("-"):
            message = bytes(buf[1:end]).decode(errors="replace")
            del buf[: end + 2]
            raise rex.ResponseError(message)
        if kind not in (ord("*"), ord(">")):
            raise rex.ConnectionError(
                f"subscribed connection: unexpected reply {bytes(buf[:end])[:40]!r}"
            )
        count, pos = int(buf[1:end]), end + 2
        items: list[Item] = []
        for _ in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            kind = buf[pos]
            if kind == ord("$"):
                start = end + 2
                stop = start + int(buf[pos + 1 : end])
                if len(buf) < stop + 2:
                    return None
                items.append(bytes(buf[start:stop]))
                pos = stop + 2
            elif kind == ord(":"):
                items.append(int(buf[pos + 1 : end]))
                pos = end + 2
            else:
                raise rex.ConnectionError(
                    f"subscribed connection: unexpected element {bytes(buf[pos:end])[:40]!r}"
                )
        del buf[:pos]
        return items


class Subscription:
    """One channel subscribed on a connected stream (connected, authenticated and, with
    Sentinel, pointed at the master by redis-py's connection, which owns the stream)."""

    def __init__(self, stream: asyncio.StreamReader, channel: str) -> None:
        self.stream = stream
        self.channel = channel.encode()
        self.frames = Frames()

    async def _next(self) -> list[Item]:
        while True:
            try:
                frame = self.frames.take()
            except ValueError:  # a length that is not a number
                raise rex.ConnectionError("subscribed connection: malformed reply") from None
            if frame is not None:
                return frame
            data = await self.stream.read(READ_SIZE)
            if not data:
                raise rex.ConnectionError("redis closed the subscribed connection")
            self.frames.feed(data)

    async def confirmed(self) -> None:
        """Wait for Redis to confirm the SUBSCRIBE (sent by the caller)."""
        while True:
            frame = await self._next()
            if frame[:2] == [b"subscribe", self.channel]:
                return

    async def messages(self) -> AsyncIterator[bytes]:
        """The payloads published to the channel, in order, until the connection fails."""
        while True:
            frame = await self._next()
            if len(frame) == 3 and frame[0] == b"message" and isinstance(frame[2], bytes):
                yield frame[2]
