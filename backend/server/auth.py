"""Bearer-token authentication, with HTTP Basic (token as password) for Automatic1111 clients."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException, Request


def token_matches(header: str | None, token: str) -> bool:
    """True when the Authorization header carries `token`, compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        offered = value.strip()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        offered = decoded.partition(":")[2]  # user name is free; the password is the token
    else:
        return False
    return hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))


def require_token(token: str | None):
    """A FastAPI dependency: 401 unless the request carries the server's token (no check without one)."""

    def check(request: Request) -> None:
        if token is None:
            return
        if not token_matches(request.headers.get("authorization"), token):
            raise HTTPException(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>' (or HTTP Basic auth with the token "
                "as password)",
                headers={"WWW-Authenticate": 'Bearer realm="scene-diffusion", Basic realm="scene-diffusion"'},
            )

    return check
