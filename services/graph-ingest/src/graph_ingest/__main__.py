"""Wiring of graph-ingest: `python -m graph_ingest --config config.json`."""

from __future__ import annotations

from graph_ingest.runtime import GraphRuntime
from graph_ingest.settings import SERVICE, GraphSettings
from tccal.service import ServiceApp, run_service


async def build(app: ServiceApp) -> None:
    settings = GraphSettings.from_config(app.config, app.secret)  # ValueError: exit code 2 naming the key
    runtime = GraphRuntime(settings, app.new_bus())
    app.readiness.add("graph", runtime.graph_ready)

    async def run() -> None:
        await runtime.run(app.stop_event)

    app.task(run)


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
