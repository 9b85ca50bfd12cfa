"""Deadlines for clients that hold a connection without finishing a request (``vitrieval serve --request-timeout-s``).

A connection costs the service a socket, a protocol object and its buffers whether or not a request ever arrives,
and uvicorn by itself waits forever for a request head that never comes or a body that trickles in a byte at a
time (its ``timeout_keep_alive`` only closes a connection that stays silent after an answer). Two deadlines, both
``timeout_s`` long, bound that:

1. **the request head** (:func:`head_timeout_protocol`, a uvicorn h11 protocol): from the moment a connection opens,
   or an answer on it is complete, the next request line and headers must arrive within ``timeout_s``. Otherwise
   the connection is closed, after a ``408 Request Timeout`` if part of a head had arrived (a client mid-request
   learns why). A request being answered is never cut: its body has the second deadline, the answer none;
2. **the request body** (:class:`BodyDeadline`, ASGI middleware): from the moment the head has arrived, the whole
   body must arrive within ``timeout_s``. Otherwise the endpoint sees the client as gone (it stops reading) and the
   client gets ``408`` with ``Connection: close`` instead of the endpoint's answer. Once the body is complete the
   endpoint takes the time it needs (a search waiting for its batch is not a slow client).

Why :data:`DEFAULT_REQUEST_TIMEOUT_S` = 30 s: a query upload of 1 MB needs 0.3 Mbit/s to arrive in time and the
largest default upload (10 MB) 2.8 Mbit/s, while a client holding connections can keep at most its connection rate
times 30 s of them open. ``benchmarks/serve_connections.py`` measures what held connections cost and that they are
released at the deadline: on a 2-core box, 3,300 held connections took about 4 KB of server memory each, the
first search while they were being accepted 10-14x the baseline, later searches no measurable time; all were
closed at the deadline (docs/FAULTS.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 30.0
"""Seconds a client has for a request head, and then for its body (module docstring for why 30)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def timeout_message(timeout_s: float, what: str) -> bytes:
    """The JSON body of a 408: ``{"detail": "..."}`` naming what did not arrive and the deadline."""
    return json.dumps({"detail": f"the request {what} did not arrive within {timeout_s:g} s "
                                 "(vitrieval serve --request-timeout-s)"}).encode()


def head_timeout_protocol(timeout_s: float) -> type:
    """A uvicorn h11 protocol class that closes a connection whose next request head is not complete within
    ``timeout_s`` of the connection opening or of its last answer (module docstring, deadline 1)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if timeout_s <= 0:
        raise ValueError(f"the request timeout must be > 0 seconds, got {timeout_s}")

    class HeadDeadlineProtocol(H11Protocol):
        """:class:`uvicorn.protocols.http.h11_impl.H11Protocol` with a deadline on each request head."""

        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = None if self.transport.is_closing() else \
                self.loop.call_later(timeout_s, self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # closed already, or a request is being answered (its body has its own deadline)
            started = bool(self.conn.trailing_data[0])  # bytes of a head that never completed
            log.debug("closing a connection from %s: no request head within %g s", self.client, timeout_s)
            if started:
                body = timeout_message(timeout_s, "head")
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            if self.conn.our_state != h11.ERROR:
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
            self.transport.close()

    HeadDeadlineProtocol.__name__ = HeadDeadlineProtocol.__qualname__ = f"HeadDeadlineProtocol_{timeout_s:g}s"
    return HeadDeadlineProtocol


def uvicorn_options(timeout_s: float) -> dict[str, Any]:
    """The ``uvicorn.run`` keywords of the head deadline (the h11 protocol above; uvicorn's own keep-alive
    timeout, 5 s, closes an idle connection sooner after an answer, as before)."""
    return {"http": head_timeout_protocol(timeout_s)}


class BodyDeadline:
    """ASGI middleware: a request's body must arrive within ``timeout_s`` of its head, else 408 and the connection
    is closed (module docstring, deadline 2)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the request timeout must be > 0 seconds, got {timeout_s}")
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False
        timed_out = False
        started = False  # the endpoint began its own answer (before the deadline: it is let through)
        answered = False  # the 408 went out instead of the endpoint's answer

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                timed_out = True
                log.info("a request body did not arrive within %g s: answered 408 and closed", self.timeout_s)
                return {"type": "http.disconnect"}  # the endpoint stops reading, as for a client gone
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_408() -> None:
            nonlocal answered
            answered = True
            body = timeout_message(self.timeout_s, "body")
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not timed_out or started:
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif not answered:
                await send_408()  # in place of the endpoint's answer (the rest of which is dropped)

        await self.app(scope, timed_receive, guarded_send)
        if timed_out and not started and not answered:  # the endpoint gave up without answering
            await send_408()
