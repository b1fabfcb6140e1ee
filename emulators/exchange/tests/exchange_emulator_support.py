"""Constants and helpers shared by the emulator's tests (module name unique across the repo)."""

from __future__ import annotations

SERVICE_USER = "svc-trueconf@example.com"
SERVICE_PASSWORD = "Svc-Passw0rd"
PLAIN_USER = "no-impersonation@example.com"
PLAIN_PASSWORD = "Plain-Passw0rd"
