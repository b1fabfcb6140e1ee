"""Wiring of tcs-gateway: `python -m tcs_gateway --config config.json`."""

from __future__ import annotations

from tccal.service import ServiceApp, run_service

SERVICE = "tcs-gateway"


async def build(app: ServiceApp) -> None:
    bus = app.new_bus()
    app.task(bus.connect)


def main() -> None:
    run_service(SERVICE, build)


if __name__ == "__main__":
    main()
