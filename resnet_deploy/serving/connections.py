"""The HTTP server under ``serve``: uvicorn's HTTP/1.1 protocol, plus a deadline on request headers.

uvicorn times out an idle keep-alive connection, and the app times out a stalled body (408), but a
client that opens a connection and sends part of its headers, or nothing, holds that connection
(and its buffers) forever: a handful of such clients is the classic slowloris. Here every request
must deliver its complete headers within ``header_timeout_s`` of its first byte or of the
connection opening, as nginx's ``client_header_timeout``; the client gets a 408 and the connection
is closed. Imported only by ``serve`` (uvicorn is the serve extra's).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   b"content-length: %d\r\n\r\n%s")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline between a request's first byte and its last header."""

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # a pipelined next request may already be parsed here
        self._watch_headers()

    def _watch_headers(self) -> None:
        """Arm the deadline while h11 waits for a request line and headers; disarm it once they came.
        Between requests uvicorn's keep-alive timeout rules until the next request's first byte."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._cancel_deadline()
        elif self._header_deadline is None and (self.timeout_keep_alive_task is None or self.conn.trailing_data[0]):
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_timed_out(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            body = b'{"error": "the request headers did not arrive within %g s"}' % self.header_timeout_s
            self.transport.write(_TIMEOUT_ANSWER % (len(body), body))
            self.transport.close()


def http_server(app: Any, host: str, port: int, *, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> uvicorn.Server:
    """A uvicorn server for ``app`` whose connections must deliver request headers within ``header_timeout_s``."""
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, http=protocol, log_level="warning"))
