"""A tiny HTTP/1.1 client over a plain socket, for tests that must see bytes exactly.

aiohttp's client normalises what it sends (it may re-encode a target, add headers) and what it
reads (header case, decoded bodies); proving that the proxy forwards raw targets and bodies byte
for byte, and which headers cross it, needs the wire itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RawResponse:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes  # de-chunked when the answer was chunked; raw otherwise

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def comparable(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """Everything but `Date`, which differs between two answers a second apart."""
        return (
            self.status_line,
            [(k.lower(), v) for k, v in self.headers if k.lower() != "date"],
            self.body,
        )


async def request(
    port: int,
    method: str,
    target: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> RawResponse:
    """Send exactly this request on a fresh connection (`Connection: close`) and read the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
        given = headers or []
        lines += [f"{k}: {v}" for k, v in given]
        if not any(k.lower() == "connection" for k, _ in given):
            lines.append("Connection: close")
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in given):
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        parsed = []
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed.append((name, value.strip()))
        response = RawResponse(status_line, parsed, b"")
        if method == "HEAD" or response.status in (204, 304):
            return response
        if (response.header("Transfer-Encoding") or "").lower() == "chunked":
            response.body = await _dechunk(reader)
        elif response.header("Content-Length") is not None:
            response.body = await reader.readexactly(int(response.header("Content-Length") or 0))
        else:
            response.body = await reader.read()
        return response
    finally:
        writer.close()
        await writer.wait_closed()


async def _dechunk(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
