"""Container health check of a connector service: GET /healthz on the service's HTTP side port.

Usage (the images' HEALTHCHECK and docker-compose.yml): python /opt/tc-calendar/healthcheck.py [SERVICE [PATH]]
SERVICE defaults to $TCCAL_SERVICE, which the service images set (deploy/docker/Dockerfile, build arg NAME).

The port and address come from the same config.json the service reads (TC_CALENDAR_CONFIG, with the
TC_CALENDAR__* environment overrides applied), so a changed httpPort needs no change here. A service bound to
a wildcard address (0.0.0.0, ::) is asked on loopback. Exit code 0: healthy; 1: anything else, with the reason
on stderr. Only the Python standard library and tccal (already in the image) are used: no curl in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

SERVICE_ENV = "TCCAL_SERVICE"
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}
TIMEOUT_SECONDS = 3.0


def health_url(service: str, path: str = "/healthz") -> str:
    """The URL of `path` on `service`'s HTTP port, as configured."""
    from tccal.config import load_config

    config = load_config(os.environ.get("TC_CALENDAR_CONFIG"), check_secrets=False)
    endpoint = config.grpc.endpoint(service)
    if endpoint.http_port == 0:
        raise ValueError(f"grpc.services.{service}.httpPort is 0 (a random port): it cannot be health-checked")
    host = "127.0.0.1" if endpoint.host in WILDCARDS else endpoint.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{endpoint.http_port}{path}"


def check(service: str, path: str = "/healthz") -> str | None:
    """None when healthy, else why not."""
    try:
        url = health_url(service, path)
    except Exception as exc:  # a bad config is unhealthy, and says why
        return f"cannot read the configuration: {exc}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            if response.status != 200:
                return f"{url} answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} is unreachable: {exc}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 1 and os.environ.get(SERVICE_ENV):
        argv = [argv[0], os.environ[SERVICE_ENV]]
    if len(argv) not in (2, 3):
        print(f"usage: healthcheck.py SERVICE [PATH] (SERVICE defaults to ${SERVICE_ENV})", file=sys.stderr)
        return 1
    problem = check(argv[1], argv[2] if len(argv) == 3 else "/healthz")
    if problem:
        print(f"{argv[1]} unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
