"""Wiring of sync-engine: `python -m sync_engine --config config.json`."""

from __future__ import annotations

from tccal.service import ServiceApp, run_service

SERVICE = "sync-engine"


async def build(app: ServiceApp) -> None:
    bus = app.new_bus()
    database = app.new_database()
    app.task(bus.connect)
    app.task(database.connect)


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
