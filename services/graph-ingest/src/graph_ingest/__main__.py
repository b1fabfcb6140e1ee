"""Wiring of graph-ingest: `python -m graph_ingest --config config.json`."""

from __future__ import annotations

from graph_ingest.runtime import GraphRuntime
from graph_ingest.settings import SERVICE, GraphSettings
from graph_ingest.writeback import DURABLE as WRITEBACK_DURABLE
from tccal.service import ServiceApp, run_service
from tccal.stream_metrics import Consumer, ConsumerMetrics
from tccal.subjects import TCS_RESULTS


async def build(app: ServiceApp) -> None:
    settings = GraphSettings.from_config(app.config, app.secret)  # ValueError: exit code 2 naming the key
    bus = app.new_bus()
    runtime = GraphRuntime(settings, bus)
    app.readiness.add("graph", runtime.graph_ready)

    async def run() -> None:
        await runtime.run(app.stop_event)

    app.task(run)
    # Stream lag and dead letters of the join-link write-back consumer (there when writeBackJoinLink is on).
    consumers = [Consumer(TCS_RESULTS, WRITEBACK_DURABLE)] if runtime.writer is not None else []
    lag = ConsumerMetrics(bus, lambda: consumers, dead_letters=True)
    app.task(lambda: lag.run(app.stop_event))


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
