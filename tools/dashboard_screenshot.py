"""A picture of the Grafana dashboard (deploy/grafana/trueconf-calendar.json) from a real run, for the docs.

    .venv/bin/python tools/dashboard_screenshot.py [--traffic-seconds 240] [--output docs/images/dashboard.png]

Starts the sandbox (`tc-calendar sandbox`, demo meetings on), registers a license that expires in a year (so the
license panels have an expiry to show), starts a real Prometheus (the `prometheus` binary, Debian's package)
scraping every service's /metrics, writes meetings through EWS for `--traffic-seconds`, then asks Prometheus every
panel's PromQL (query_range) and draws the panels in their grid (tools/dashboard_preview), and has headless
Chromium photograph the page.

Grafana itself cannot be installed on the project's machines (no Debian, PyPI or npm package carries its server),
so this is a preview of the dashboard's panels drawn from the real run's Prometheus data, not Grafana; the picture
says so in its header, and so must every caption of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click
from dashboard_preview.chromium import screenshot
from dashboard_preview.dashboard import load_dashboard
from dashboard_preview.prometheus import running_prometheus
from dashboard_preview.query import query_dashboard
from dashboard_preview.render import PAGE_WIDTH_PX, page_height, render_page
from dashboard_preview.traffic import Traffic, write_meetings

from tccal_sandbox.testing import running_sandbox, short_tmpdir, wait_for

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "trueconf-calendar.json"
CAPTION = (
    "Preview, not Grafana: the panels of deploy/grafana/trueconf-calendar.json drawn by tools/dashboard_preview "
    "from a real sandbox run's Prometheus data (Grafana is not installable on this machine)."
)


def register_expiring_license(ready: dict[str, object], state: Path, days: int) -> None:
    """Issue a Standard key that expires in `days` days at the sandbox's registration authority and register it
    as an administrator does (`tc-calendar --register KEY`)."""
    env = {"TC_CALENDAR_CONFIG": str(ready["config"]), "TC_CALENDAR_KEY_FILE": str(state / "machine.key")}
    key = subprocess.run(
        [
            *(sys.executable, "-m", "registration_emulator", "--state-dir", str(state / "registration")),
            *("issue-key", "--tier", "standard", "--seats", "100", "--expires", f"+{days}d"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    result = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "--register", key],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if result.returncode != 0:
        raise RuntimeError(f"registering the expiring license failed: {result.stderr or result.stdout}")


@click.command()
@click.option("--traffic-seconds", default=240.0, show_default=True, help="How long meetings are written.")
@click.option("--scrape-interval", default=2.0, show_default=True, help="Prometheus' scrape interval, seconds.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=ROOT / "docs" / "images" / "dashboard.png",
    show_default=True,
)
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Keep the page too."
)
def main(traffic_seconds: float, scrape_interval: float, output: Path, html_path: Path | None) -> None:
    dashboard = load_dashboard(DASHBOARD)
    state = short_tmpdir("tcdash")
    click.echo(f"sandbox and Prometheus state: {state}")
    with running_sandbox(prefix="tcdash", state_dir=state) as sandbox:
        ready = sandbox.ready
        register_expiring_license(ready, state, days=365)
        targets = {name: endpoints["http"] for name, endpoints in ready["services"].items()}
        with running_prometheus(targets, state / "prometheus", scrape_interval_s=scrape_interval) as prometheus:
            wait_for(
                lambda: set(prometheus.scraped_up().values()) == {"up"},
                60,
                interval=1.0,
                what="Prometheus to scrape every service",
            )
            start = time.time()

            def progress(traffic: Traffic) -> None:
                click.echo(
                    f"  meetings created {traffic.created}, moved {traffic.moved}, cancelled {traffic.cancelled}"
                )

            traffic = write_meetings(ready, duration_s=traffic_seconds, progress=progress)
            time.sleep(4 * scrape_interval)  # the last changes propagated and scraped
            end = time.time()
            results = query_dashboard(prometheus, dashboard, start, end)
    page = render_page(dashboard, results, (start, end), CAPTION)
    page_file = html_path or state / "dashboard.html"
    page_file.write_text(page)
    screenshot(page_file, output, width=PAGE_WIDTH_PX, height=page_height(dashboard))
    empty = [p.title for p in dashboard.queried() if not any(r.series for r in results[p.id])]
    click.echo(
        f"{output}: {output.stat().st_size // 1024} KiB; {traffic.created} meetings over {end - start:.0f} s; "
        f"panels without data: {empty or 'none'}"
    )


if __name__ == "__main__":
    main()
