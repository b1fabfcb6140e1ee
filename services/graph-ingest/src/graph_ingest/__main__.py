"""Wiring of graph-ingest: `python -m graph_ingest --config config.json`."""

from __future__ import annotations

from graph_ingest.metrics import export_subscriptions
from graph_ingest.runtime import GraphRuntime
from graph_ingest.settings import SERVICE, GraphSettings
from tccal.ingest.writeback import watch_writeback
from tccal.service import ServiceApp, run_service


async def build(app: ServiceApp) -> None:
    settings = GraphSettings.from_config(app.config, app.secret)  # ValueError: exit code 2 naming the key
    bus = app.new_bus()
    runtime = GraphRuntime(settings, bus)
    app.readiness.add("graph", runtime.graph_ready)
    export_subscriptions(runtime.subscriptions_active)

    async def run() -> None:
        await runtime.run(app.stop_event)

    app.task(run)
    watch_writeback(app, bus, runtime.writer)  # the join-link write-back consumer's lag and dead letters


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
