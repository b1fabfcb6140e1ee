"""The common life of a service process: config, telemetry, gRPC + probe servers, background tasks, SIGTERM.

A service's `__main__` builds a ServiceApp (registers its gRPC servicers, readiness checks and tasks) and calls
`run_service`. Config comes from --config or TC_CALENDAR_CONFIG; a bad config exits with code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import click
import uvloop

from tccal import telemetry
from tccal.bus import Bus, BusSettings
from tccal.clock import Clock, SystemClock
from tccal.config import Config, ConfigError, load_config
from tccal.config.loader import CONFIG_ENV, EXIT_CONFIG
from tccal.db import Database
from tccal.db_tls import ssl_context
from tccal.grpckit import AccessPolicy, GrpcServer, TlsMaterial
from tccal.probes import ProbeServer, Readiness
from tccal.production import demo_secret_refusals
from tccal.secrets import SecretError, reveal
from tccal.stream_limits import StreamUsageWatch

log = logging.getLogger(__name__)

#: After SIGTERM, how long background tasks have to return on their own (finish the messages at hand) before the
#: rest are cancelled: a connect retrying an unreachable NATS or PostgreSQL, a fetch waiting on a dead connection.
TASK_GRACE_SECONDS = 4.0
#: How long all `on_stop` cleanups together may take (a bus drain or pool close can wait on a server that is gone).
CLEANUP_SECONDS = 3.0
#: gRPC calls in flight get this long to finish. With the two above the stop stays well within systemd's
#: TimeoutStopSec (30 s) whatever NATS and PostgreSQL do.
GRPC_GRACE_SECONDS = 3.0


class ServiceApp:
    """Everything one service process runs, started and stopped in order."""

    def __init__(self, name: str, config: Config, *, policy: AccessPolicy | None = None) -> None:
        self.name = name
        self.config = config
        self.clock: Clock = SystemClock()
        self.stop_event = asyncio.Event()
        self.readiness = Readiness()
        endpoint = config.grpc.endpoint(name)
        self.grpc = GrpcServer(
            endpoint.host,
            endpoint.grpc_port,
            policy=policy,
            admin_token=self.secret(config.grpc.admin_token),
            tls=TlsMaterial.from_config(config.grpc.tls),
        )
        self.probes = ProbeServer(name, endpoint.host, endpoint.http_port, self.readiness)
        self._tasks: list[Callable[[], Awaitable[None]]] = []
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._running: list[asyncio.Task[None]] = []
        #: Why the service stopped itself (e.g. a NATS that takes anonymous clients): exit code 2.
        self.refused: str | None = None

    def secret(self, value: str) -> str:
        return reveal(value, allow_plaintext=self.config.allow_plaintext_passwords)

    def bus_settings(self) -> BusSettings:
        return BusSettings.from_config(self.config, self.name)

    def new_bus(self) -> Bus:
        bus = Bus(self.bus_settings())

        async def nats_ready() -> None:
            if not bus.connected:
                raise ConnectionError("NATS not connected")

        self.readiness.add("nats", nats_ready)
        bus.refusal_listeners.append(self.refuse)
        self.on_stop(bus.close)
        watch = StreamUsageWatch(
            lambda: bus.js, bus.declared_streams(), alert_percent=bus.settings.stream_alert_percent
        )
        self.task(lambda: watch.run(self.stop_event))
        return bus

    def refuse(self, reason: str) -> None:
        """Stop the service for good: it must not run as configured (run_service exits with code 2)."""
        self.refused = reason
        self.stop_event.set()

    def new_database(self) -> Database:
        """The service's PostgreSQL pool; readiness reports it, the caller connects it (`await db.connect()`).
        TLS files that cannot be used stop the service now (ValueError naming the key: exit code 2)."""
        ssl_context(self.config.db_connection_config)
        database = Database(self.config)
        self.readiness.add("postgres", database.check)
        self.on_stop(database.close)
        return database

    def task(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` in the background from start until stop (it should return when stop_event is set)."""
        self._tasks.append(run)

    def on_stop(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run `cleanup` at shutdown, in reverse order of registration."""
        self._cleanups.append(cleanup)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        grpc_port = await self.grpc.start()
        http_port = await self.probes.start()
        log.info("%s started", self.name, extra={"grpc_port": grpc_port, "http_port": http_port})
        self._running = [asyncio.create_task(self._guard(t), name=f"{self.name}-task") for t in self._tasks]
        watcher = asyncio.create_task(self._watch_readiness())
        await self.stop_event.wait()
        log.info("%s stopping", self.name)
        await self.grpc.set_serving(False)
        watcher.cancel()
        if self.refused is not None:  # nothing of this run may go on (a connect may be retrying forever)
            for running in self._running:
                running.cancel()
        await _finish(self._running, TASK_GRACE_SECONDS)
        await self._clean_up(CLEANUP_SECONDS)
        await self.grpc.stop(grace=GRPC_GRACE_SECONDS)
        await self.probes.stop()
        log.info("%s stopped", self.name)
        telemetry.shutdown()

    async def _clean_up(self, seconds: float) -> None:
        """Run the cleanups in reverse order of registration, all within `seconds`; one that fails or overruns is
        logged and the rest still run (each gets at least a moment, to close what it can without waiting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for cleanup in reversed(self._cleanups):
            try:
                await asyncio.wait_for(cleanup(), max(0.1, deadline - loop.time()))
            except TimeoutError:
                log.warning("cleanup did not finish in time", extra={"cleanup": _name_of(cleanup)})
            except Exception as exc:  # keep stopping the rest
                log.warning("cleanup failed", extra={"cleanup": _name_of(cleanup), "error": repr(exc)})

    async def _guard(self, run: Callable[[], Awaitable[None]]) -> None:
        """A background task that crashes is logged and restarted after a pause, never silently lost."""
        while not self.stop_event.is_set():
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task failed; restarting in 1 s", extra={"service": self.name})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), 1.0)

    async def _watch_readiness(self) -> None:
        async def publish(ready: bool, checks: dict[str, str]) -> None:
            await self.grpc.set_serving(ready)
            log.info("%s is %s", self.name, "ready" if ready else "not ready", extra={"checks": str(checks)})

        self.readiness.listeners.append(publish)
        while True:
            await self.readiness.evaluate()
            await asyncio.sleep(1.0)


async def _finish(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Let `tasks` return on their own for `grace` seconds, then cancel those still running and wait for them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    if pending:
        log.warning("background tasks did not stop in time; cancelling them", extra={"tasks": len(pending)})
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=grace)
    for task in tasks:  # retrieve every outcome (a crash was logged by _guard; cancellation is expected here)
        if task.done() and not task.cancelled():
            task.exception()


def _name_of(cleanup: Callable[[], Awaitable[None]]) -> str:
    return getattr(cleanup, "__qualname__", repr(cleanup))


def load_or_exit(config_path: str | None) -> Config:
    path = config_path or os.environ.get(CONFIG_ENV)
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        sys.exit(EXIT_CONFIG)


def run_service(
    name: str,
    build: Callable[[ServiceApp], Awaitable[None]],
    *,
    policy: AccessPolicy | None = None,
    argv: list[str] | None = None,
) -> NoReturn:
    """Entry point of `python -m <service>`."""

    @click.command(name=name, help=f"Run the {name} service of the TrueConf Calendar Connector.")
    @click.option("--config", "config_path", type=click.Path(), help=f"config.json (default: ${CONFIG_ENV}).")
    def main(config_path: str | None) -> None:
        config = load_or_exit(config_path)
        refusals = demo_secret_refusals(config)
        if refusals:
            for refusal in refusals:
                click.echo(f"{name}: {refusal}", err=True)
            sys.exit(EXIT_CONFIG)
        telemetry.setup(
            name,
            otlp_endpoint=config.telemetry.otlp_endpoint,
            log_level=config.telemetry.log_level,
            log_format=config.telemetry.log_format,
        )
        try:
            refused = uvloop.run(_main(name, config, build, policy))
        except SecretError as exc:
            click.echo(f"{name}: a configured secret is unusable: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except ValueError as exc:
            click.echo(f"{name}: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        if refused is not None:
            click.echo(f"{name}: {refused}", err=True)
            sys.exit(EXIT_CONFIG)

    main(args=argv)
    sys.exit(0)


async def _main(
    name: str, config: Config, build: Callable[[ServiceApp], Awaitable[None]], policy: AccessPolicy | None
) -> str | None:
    """Run the service until stopped; the reason it refused to run, if it did."""
    app = ServiceApp(name, config, policy=policy)
    await build(app)
    await app.run()
    return app.refused
