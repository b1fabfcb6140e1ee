"""A screenshot of a local HTML page by headless Chromium (Debian's package `chromium`), started with the flags
that keep it off the network and with a new, empty profile."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    """The first Chromium on PATH, or None."""
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def screenshot(page: Path, output: Path, *, width: int, height: int, timeout: float = 120.0) -> None:
    """Write a PNG of `page` (an HTML file) at `width` × `height` CSS px to `output`; RuntimeError with
    Chromium's output when it fails or writes nothing."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError(f"no Chromium on PATH ({', '.join(CANDIDATES)}): apt-get install chromium")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="tc-dashboard-chromium-") as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={output}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    if result.returncode != 0 or not output.exists() or output.stat().st_size == 0:
        raise RuntimeError(f"chromium did not write {output} (exit {result.returncode}): {result.stderr[-3000:]}")
