"""Step-by-step connectivity checks run inside a service with its own configuration and secrets (IngestService
.TestMailbox, GatewayService.TestServer): name resolution, TCP, TLS, then whatever the service adds (authentication,
permissions, one read). Each step is OK, FAIL (with what was found and what to change) or SKIPPED (an earlier step
failed, or it does not apply); once a step failed the rest are skipped, so the first FAIL is the one to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from trueconf.calendar.v1 import common_pb2

#: Seconds one network step may take (a firewall that drops packets answers nothing).
STEP_TIMEOUT = 10.0


class StepFailedError(Exception):
    """A step failed: `detail` is what was found, `fix` what to change."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass
class Checklist:
    """The steps of one check, in the order run."""

    steps: list[common_pb2.ConnectivityStep] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.outcome == common_pb2.CONNECTIVITY_OUTCOME_FAIL for s in self.steps)

    def skip(self, name: str, detail: str) -> None:
        self.steps.append(
            common_pb2.ConnectivityStep(name=name, outcome=common_pb2.CONNECTIVITY_OUTCOME_SKIPPED, detail=detail)
        )

    async def run(self, name: str, step: Callable[[], Awaitable[str]]) -> bool:
        """Run `step` (it returns what it found, or raises StepFailedError); skipped after an earlier failure."""
        if self.failed:
            self.skip(name, "not run: an earlier step failed")
            return False
        try:
            detail = await asyncio.wait_for(step(), STEP_TIMEOUT * 3)
        except StepFailedError as exc:
            self.steps.append(
                common_pb2.ConnectivityStep(
                    name=name, outcome=common_pb2.CONNECTIVITY_OUTCOME_FAIL, detail=exc.detail, fix=exc.fix
                )
            )
            return False
        except TimeoutError:
            self.steps.append(
                common_pb2.ConnectivityStep(
                    name=name,
                    outcome=common_pb2.CONNECTIVITY_OUTCOME_FAIL,
                    detail=f"no answer within {STEP_TIMEOUT * 3:g} s",
                    fix="the other side accepts the connection but does not answer: check that the server is running "
                    "and not overloaded, and that no proxy holds the request",
                )
            )
            return False
        self.steps.append(
            common_pb2.ConnectivityStep(name=name, outcome=common_pb2.CONNECTIVITY_OUTCOME_OK, detail=detail)
        )
        return True


async def resolve(host: str, port: int, key: str) -> str:
    """DNS: `host` has addresses. `key` names the config key holding the host (for the fix)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), STEP_TIMEOUT)
    except (socket.gaierror, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "timed out"
        raise StepFailedError(
            f"{host} does not resolve: {reason}",
            f"check {key} ({host!r}) and this machine's DNS (the name must resolve where the service runs)",
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    return f"{host} resolves to {', '.join(addresses[:4])}"


async def connect(host: str, port: int, key: str) -> str:
    """TCP: something accepts connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), STEP_TIMEOUT)
    except TimeoutError:
        raise StepFailedError(
            f"connecting to {host}:{port} timed out after {STEP_TIMEOUT:g} s",
            f"a firewall drops the packets or the host is down: open TCP {port} from this machine to {host}, "
            f"or correct {key}",
        ) from None
    except OSError as exc:
        raise StepFailedError(
            f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            f"nothing listens at {host}:{port}: check that the server runs and {key} names its port",
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return f"{host}:{port} accepts TCP connections"


async def handshake(host: str, port: int, *, verify: bool, verify_key: str) -> str:
    """TLS: the handshake succeeds and (when `verify`) the certificate is trusted and names `host`."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), STEP_TIMEOUT
        )
    except ssl.SSLCertVerificationError as exc:
        raise StepFailedError(
            f"the certificate of {host}:{port} is not trusted: {exc.verify_message}",
            "install the CA that signed the server's certificate on this machine (or in the container's trust "
            f"store), or give the server a certificate for {host}; {verify_key}=false only on test installations",
        ) from None
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        raise StepFailedError(
            f"TLS handshake with {host}:{port} failed: {exc!r}",
            "the port does not speak TLS (http instead of https?) or offers no protocol this machine accepts: "
            "check the scheme and port of the URL",
        ) from None
    tls = writer.get_extra_info("ssl_object")
    version = tls.version() if tls is not None else "TLS"
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    trust = "certificate trusted" if verify else "certificate NOT verified (verifyTls false)"
    return f"{version} with {host}:{port}, {trust}"
