"""Run the emulator as a real process (tests, sandbox): ``start_emulator(state_dir)``; ``authority_key(state_dir)``
for tests that must sign a document the authority would refuse to issue (a Free license in an offline file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from registration_emulator.document import AuthorityKey
from registration_emulator.state import StateDir


@dataclass
class RunningEmulator:
    url: str
    public_key: str
    key_id: str
    state_dir: Path
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.state_dir, *args, check=check)

    def issue_key(self, tier: str, seats: int | None = None, expires: str | None = None) -> str:
        args = ["issue-key", "--tier", tier]
        if seats is not None:
            args += ["--seats", str(seats)]
        if expires is not None:
            args += ["--expires", expires]
        return self.cli(*args).stdout.strip()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def authority_key(state_dir: Path) -> AuthorityKey:
    """The authority key of an emulator state directory (docs/license-format.md §4)."""
    return StateDir(state_dir).load_authority_key()


def run_cli(state_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "registration_emulator", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"registration_emulator {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def start_emulator(
    state_dir: Path,
    port: int = 0,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    timeout: float = 30.0,
) -> RunningEmulator:
    """Start ``python -m registration_emulator serve`` on 127.0.0.1 and wait for its ready-file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / f"ready-{os.getpid()}-{time.monotonic_ns()}.json"
    log_path = state_dir / "serve.log"
    args = [
        sys.executable,
        "-m",
        "registration_emulator",
        "--state-dir",
        str(state_dir),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ready-file",
        str(ready),
    ]
    if tls_cert is not None and tls_key is not None:
        args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    try:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(
                f"registration emulator exited with {process.returncode}: {log_path.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"registration emulator not ready after {timeout}s; log: {log_path}")
        time.sleep(0.05)
    info = json.loads(ready.read_text("utf-8"))
    ready.unlink()
    bound_port = int(info["url"].rsplit(":", 1)[1])
    return RunningEmulator(
        url=info["url"],
        public_key=info["public_key"],
        key_id=info["key_id"],
        state_dir=state_dir,
        port=bound_port,
        process=process,
        log_path=log_path,
    )
