"""``HEAD`` wherever ``GET`` is: FastAPI routes a ``GET`` only, so one ASGI middleware answers every ``HEAD`` as
its ``GET`` without the body (``/``, ``/healthz``, ``/images/{id}``, ``/docs``...)."""

from __future__ import annotations

from vitrieval.serve.timeouts import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: ``HEAD`` answered wherever ``GET`` is (the ``GET`` route's status and headers, no body);
    where there is no ``GET`` either, the ``405`` of the ``GET``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
