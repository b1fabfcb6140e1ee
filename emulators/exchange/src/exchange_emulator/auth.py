"""HTTP authentication the way IIS in front of Exchange does it: NTLM (connection-based, via pyspnego) and Basic."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import spnego
from aiohttp import web
from multidict import CIMultiDict

from .model import Account, Store, normalize_username

log = logging.getLogger(__name__)


@dataclass
class _ConnState:
    transport: object
    context: spnego.ContextProxy | None = None
    account: Account | None = None


class Authenticator:
    """Checks credentials of each request. NTLM state is kept per TCP connection, as IIS does."""

    def __init__(self, store: Store, realm: str = "127.0.0.1") -> None:
        self.store = store
        self.realm = realm
        self._dir = tempfile.TemporaryDirectory(prefix="exchange-emulator-ntlm-")
        self.user_file = Path(self._dir.name) / "ntlm_users"
        self._conns: dict[int, _ConnState] = {}
        self.write_user_file()

    def close(self) -> None:
        self._dir.cleanup()

    def write_user_file(self) -> None:
        """Rewrite the pyspnego NTLM credential store (NTLM_USER_FILE) from the accounts."""
        lines: list[str] = []
        for acc in self.store.accounts.values():
            name = acc.username.strip()
            password = acc.password
            if ":" in password or "\n" in password:
                raise ValueError(f"account {name!r}: passwords with ':' or newlines are not supported for NTLM")
            if "\\" in name:
                domain, user = name.split("\\", 1)
                lines.append(f"{domain}:{user}:{password}")
                lines.append(f":{user}:{password}")
            else:
                lines.append(f":{name}:{password}")
                if "@" in name:
                    lines.append(f"{self.store.domain}:{name.split('@', 1)[0]}:{password}")
                else:
                    lines.append(f"{self.store.domain}:{name}:{password}")
        tmp = self.user_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(self.user_file)
        os.environ["NTLM_USER_FILE"] = str(self.user_file)

    def challenge_headers(self) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers.add("WWW-Authenticate", "NTLM")
        headers.add("WWW-Authenticate", f'Basic realm="{self.realm}"')
        return headers

    def unauthorized(self, extra: CIMultiDict[str] | None = None) -> web.Response:
        headers = extra if extra is not None else self.challenge_headers()
        headers["Content-Type"] = "text/html"
        return web.Response(
            status=401,
            headers=headers,
            text="401 - Unauthorized: Access is denied due to invalid credentials.",
        )

    def _purge(self) -> None:
        if len(self._conns) < 256:
            return
        for key, state in list(self._conns.items()):
            transport = state.transport
            closing = getattr(transport, "is_closing", None)
            if transport is None or (callable(closing) and closing()):
                del self._conns[key]

    def _conn(self, request: web.Request) -> _ConnState:
        transport = request.transport
        key = id(transport)
        state = self._conns.get(key)
        if state is None or state.transport is not transport:
            self._purge()
            state = _ConnState(transport=transport)
            self._conns[key] = state
        return state

    def authenticate(self, request: web.Request) -> Account | web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        state = self._conn(request)
        if not header:
            if state.account is not None:
                return state.account
            return self.unauthorized()
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(token.strip()).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return self.unauthorized()
            acc = self.store.find_account(user)
            if acc is None or acc.password != password:
                return self.unauthorized()
            return acc
        if scheme in ("ntlm", "negotiate"):
            return self._ntlm(state, scheme, token.strip())
        return self.unauthorized()

    def _ntlm(self, state: _ConnState, scheme: str, token: str) -> Account | web.Response:
        try:
            data = base64.b64decode(token)
        except binascii.Error:
            return self.unauthorized()
        if len(data) >= 12 and data[:8] == b"NTLMSSP\x00" and data[8] == 1:
            state.context = spnego.server(protocol="ntlm")
            state.account = None
        if state.context is None:
            return self.unauthorized()
        try:
            out = state.context.step(data)
        except Exception as exc:  # pyspnego raises SpnegoError subclasses for bad credentials or messages
            log.info("NTLM authentication failed: %s", exc)
            state.context = None
            return self.unauthorized()
        if not state.context.complete:
            headers: CIMultiDict[str] = CIMultiDict()
            label = "Negotiate" if scheme == "negotiate" else "NTLM"
            headers.add("WWW-Authenticate", f"{label} {base64.b64encode(out or b'').decode()}")
            return self.unauthorized(headers)
        principal = state.context.client_principal or ""
        state.context = None
        acc = self.store.find_account(principal)
        if acc is None and "\\" in principal:
            acc = self.store.find_account(principal.split("\\", 1)[1])
        if acc is None:
            for candidate in self.store.accounts.values():
                if normalize_username(candidate.username).split("@", 1)[0] == normalize_username(principal):
                    acc = candidate
                    break
        if acc is None:
            return self.unauthorized()
        state.account = acc
        return acc
