"""A real Prometheus server (the `prometheus` binary; Debian's package `prometheus`) scraping the services'
/metrics, and its HTTP API as Grafana's Prometheus datasource uses it (`/api/v1/query_range`)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tccal_sandbox.embedded import free_port


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, a timeout): its errorType and message."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  #: (unix seconds, value); NaN where Prometheus answered NaN

    def last_number(self) -> float | None:
        """The last value that is a number (Grafana's `lastNotNull` reduction), or None."""
        for _, value in reversed(self.points):
            if not math.isnan(value):
                return value
        return None


@dataclass(frozen=True)
class Prometheus:
    url: str
    scrape_interval_s: float
    process: subprocess.Popen[bytes]
    log_path: Path

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422/503 carry the JSON error body
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params)}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        """Every series `expr` yields from `start` to `end` (unix seconds) at `step_s`; PrometheusError naming the
        query when Prometheus rejects it."""
        data = self._get(
            "/api/v1/query_range", {"query": expr, "start": str(start), "end": str(end), "step": str(step_s)}
        )
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{expr!r}: expected a matrix, Prometheus answered {data['resultType']}")
        return [
            Series(dict(item["metric"]), [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]
        ]

    def scraped_up(self) -> dict[str, str]:
        """Every active target's scrape URL and its health (`up`, `down`, `unknown`)."""
        data = self._get("/api/v1/targets", {"state": "active"})
        return {target["scrapeUrl"]: target["health"] for target in data["activeTargets"]}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def prometheus_binary() -> str | None:
    """The `prometheus` program on PATH, or None."""
    return shutil.which("prometheus")


def scrape_config(targets: Mapping[str, str], scrape_interval_s: float) -> dict[str, Any]:
    """Prometheus configuration scraping each `component → http://host:port` at /metrics, labelled as
    deploy/compose/prometheus.yaml labels them (job tc-calendar, label component)."""
    static = []
    for component, base in sorted(targets.items()):
        address = urllib.parse.urlsplit(base)
        if address.scheme != "http" or not address.hostname or not address.port:
            raise ValueError(f"{component}: {base!r} is not an http://host:port address")
        static.append({"targets": [f"{address.hostname}:{address.port}"], "labels": {"component": component}})
    interval = f"{round(scrape_interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "tc-calendar", "metrics_path": "/metrics", "static_configs": static}],
    }


@contextmanager
def running_prometheus(
    targets: Mapping[str, str], state_dir: Path, *, scrape_interval_s: float = 1.0, timeout: float = 60.0
) -> Iterator[Prometheus]:
    """Start Prometheus scraping `targets` (component → base URL), its data and log in `state_dir`; wait until it
    is ready; stop it on the way out. RuntimeError with its log when it exits or is not ready in `timeout` s."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("no `prometheus` on PATH: install Debian's package prometheus (apt-get install prometheus)")
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(targets, scrape_interval_s), indent=2))  # JSON is YAML
    port = free_port()
    log_path = state_dir / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={state_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", scrape_interval_s, process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(prometheus.url):
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({process.returncode}): {prometheus.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in {timeout} s: {prometheus.log()[-3000:]}")
            time.sleep(0.2)
        yield prometheus
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
