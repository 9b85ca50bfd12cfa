"""The write token of the service: ``Authorization: Bearer <token>`` on ``POST /images`` and ``DELETE
/images/{id}``.

No token configured: the service is read-only and refuses every write (403). A request without a bearer token:
401 (with ``WWW-Authenticate: Bearer``); a wrong one: 403. The comparison is :func:`hmac.compare_digest` on the
UTF-8 bytes, so its time does not depend on how much of the token is right.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import HTTPException

TOKEN_ENV = "VITRIEVAL_WRITE_TOKEN"
MIN_TOKEN_LENGTH = 16


def read_write_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The write token: the content of ``token_file`` (stripped), else the environment variable
    :data:`TOKEN_ENV`, else ``None`` (read-only). An empty or short token is refused (``ValueError``)."""
    environ = dict(os.environ) if environ is None else environ
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--write-token-file {path}: cannot read it ({exc})") from None
        where = f"--write-token-file {path}"
    elif environ.get(TOKEN_ENV) is not None:
        token, where = environ[TOKEN_ENV].strip(), TOKEN_ENV
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ValueError(f"{where}: the write token must be at least {MIN_TOKEN_LENGTH} characters without "
                         f"spaces (got {len(token)}); e.g. python -c 'import secrets; print(secrets.token_urlsafe())'")
    return token


class WriteAuth:
    """Checks the ``Authorization`` header of a write against the configured token (``None``: read-only)."""

    def __init__(self, token: str | None) -> None:
        self._token = None if token is None else token.encode("utf-8")

    @property
    def writable(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> None:
        """Raise the HTTP error for a write with this ``Authorization`` header; return when it is allowed."""
        if self._token is None:
            raise HTTPException(403, "this service is read-only: start it with --write-token-file (or "
                                     f"{TOKEN_ENV}) to accept writes")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPException(401, "writes need the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            raise HTTPException(403, "wrong write token")
