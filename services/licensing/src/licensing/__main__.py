"""Wiring of licensing: `python -m licensing --config config.json`."""

from __future__ import annotations

from tccal.service import ServiceApp, run_service

SERVICE = "licensing"


async def build(app: ServiceApp) -> None:
    database = app.new_database()
    app.task(database.connect)


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
