"""The online registration API (aiohttp), docs/license-format.md §10.

* ``POST /api/v1/register`` ``{"key", "installation_fingerprint", "product_version"}``
  → ``{"license": envelope}``
* ``POST /api/v1/check`` ``{"license_id", "key_sha256", "installation_fingerprint", "nonce"}``
  → signed receipt
* ``GET /api/v1/authority`` → ``{"public_key", "key_id"}``;  ``GET /healthz`` → ``{"status": "ok"}``

Refusals: ``{"error": "<code>", "message": "..."}`` with 400 (malformed_key, invalid_request),
403 (key_revoked, free_offline_refused), 404 (unknown_key, unknown_license),
409 (key_in_use, foreign_installation), 410 (key_expired).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from registration_emulator.authority import Authority, AuthorityRefusalError

log = logging.getLogger("registration_emulator")

AUTHORITY_KEY: web.AppKey[Authority] = web.AppKey("authority", Authority)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _body(request: web.Request, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AuthorityRefusalError(400, "invalid_request", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise AuthorityRefusalError(400, "invalid_request", "the request body must be a JSON object")
    for name in fields:
        if not isinstance(body.get(name), str):
            raise AuthorityRefusalError(400, "invalid_request", f"field {name!r} is missing or not a string")
    return body


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AuthorityRefusalError as exc:
        log.info("refused %s: %s %s", request.path, exc.code, exc.message)
        return _error(exc.http_status, exc.code, exc.message)


async def register(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY_KEY]
    body = await _body(request, ("key", "installation_fingerprint"))
    envelope = await asyncio.to_thread(authority.register_online, body["key"], body["installation_fingerprint"])
    lic = envelope["license"]
    log.info(
        "registered license %s (%s, %d seats) for installation %s",
        lic["license_id"],
        lic["tier"],
        lic["seats"],
        lic["installation_fingerprint"][:16],
    )
    return web.json_response({"license": envelope})


async def check(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY_KEY]
    body = await _body(request, ("license_id", "key_sha256", "installation_fingerprint", "nonce"))
    answer = await asyncio.to_thread(
        authority.check,
        body["license_id"],
        body["key_sha256"],
        body["installation_fingerprint"],
        body["nonce"],
    )
    return web.json_response(answer)


async def authority_info(request: web.Request) -> web.Response:
    signer = request.app[AUTHORITY_KEY].signer
    return web.json_response({"public_key": signer.public_text, "key_id": signer.key_id})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(authority: Authority) -> web.Application:
    app = web.Application(middlewares=[refusals])
    app[AUTHORITY_KEY] = authority
    app.router.add_post("/api/v1/register", register)
    app.router.add_post("/api/v1/check", check)
    app.router.add_get("/api/v1/authority", authority_info)
    app.router.add_get("/healthz", healthz)
    return app
