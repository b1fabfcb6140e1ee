"""Wiring of ews-ingest: `python -m ews_ingest --config config.json`."""

from __future__ import annotations

from tccal.service import ServiceApp, run_service

SERVICE = "ews-ingest"


async def build(app: ServiceApp) -> None:
    bus = app.new_bus()
    app.task(bus.connect)


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
