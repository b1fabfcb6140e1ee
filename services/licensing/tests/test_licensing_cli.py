"""Registration through the real `tc_calendar` CLI (guide §2.4), against the real registration emulator and the
embedded PostgreSQL: every success and every refusal with its own reason and exit code.

`installation.cli(...)` runs the installed `tc_calendar` program in a subprocess; `installation.run(...)` runs the
same click application in this process (interpreter start-up is most of a subprocess's cost here). The guide's
successes and one refusal of each kind of input go through the subprocess; the rest of the matrix in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from licensing.authority import AUTHORITY_KEY_ID
from licensing.errors import InvalidRegistrationFileError
from licensing.fingerprint import new_install_id
from licensing.keys import parse_key
from licensing.offline import OfflineRequest, OfflineResponse, encode_crg
from licensing.sealing import Sealer
from registration_emulator.document import LicenseTerms
from registration_emulator.offline import write_response
from registration_emulator.testing import RunningEmulator, authority_key
from registration_emulator.tiers import Tier
from tccal_sandbox.embedded import free_port

REGISTERED = "Your product successfully registered. Now you can run tc_calendar"
REGISTERED_OFFLINE = "Your product successfully registered offline. Now you can run tc_calendar"


def unreachable(installation: Any) -> Any:
    """The same installation, configured with a registration server nobody listens on."""
    config = json.loads(installation.config.read_text())
    config["license"]["registrationUrl"] = f"http://127.0.0.1:{free_port()}"
    path = installation.config.with_name("config-offline.json")
    path.write_text(json.dumps(config))
    return type(installation)(path, installation.workdir)


def sign(emulator: RunningEmulator, request: Path, response: Path, *extra: str) -> Path:
    emulator.cli("sign-offline", str(request), "-o", str(response), *extra)
    return response


def register_elsewhere(emulator: RunningEmulator, key: str) -> None:
    body = json.dumps({"key": key, "installation_fingerprint": random_fingerprint()}).encode()
    request = urllib.request.Request(f"{emulator.url}/api/v1/register", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def test_online_registration_of_each_paid_tier_and_free(installation: Any, emulator: RunningEmulator) -> None:
    free = emulator.issue_key("free")
    proc = installation.cli("--register", free)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == REGISTERED
    shown = installation.license()
    assert (shown["tier"], shown["seats"], shown["status"]) == ("free", 50, "valid")
    checked = datetime.fromisoformat(shown["last_online_check"])
    assert datetime.fromisoformat(shown["grace_until"]) == checked + timedelta(days=7)

    # A newer key replaces the license in force; the installation (and its fingerprint) stays the same.
    key = emulator.issue_key("enterprise", 700)
    proc = installation.cli("--register", key)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == REGISTERED
    again = installation.license()
    assert again["tier"] == "enterprise" and again["seats"] == 700
    assert again["features"] == ["multiple_providers", "offline_registration"]
    assert again["expires_at"] is None and again["grace_until"] is None
    assert again["installation_fingerprint"] == shown["installation_fingerprint"]
    # The authority bound the key to exactly that fingerprint.
    keys = json.loads(emulator.cli("list-keys").stdout)
    record = next(k for k in keys if k["key"] == key)
    assert list(record["activations"]) == [shown["installation_fingerprint"]]


def test_offline_registration_round_trip(installation: Any, emulator: RunningEmulator) -> None:
    offline = unreachable(installation)
    key = emulator.issue_key("standard", 250)
    proc = offline.cli("--register", key)
    assert proc.returncode == 3, proc.stderr
    request = installation.workdir / "regoffline.crg"
    assert f"Offline registration request written to {request}" in proc.stdout
    assert "is unreachable" in proc.stdout
    assert request.exists()

    sign(emulator, request, installation.workdir / "regoffline2.crg")
    proc = offline.cli("--offline_reg", "regoffline2.crg")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == REGISTERED_OFFLINE
    shown = offline.license()
    assert (shown["tier"], shown["seats"], shown["status"]) == ("standard", 250, "valid")
    # A paid license needs no registration server: it stays valid with the server unreachable.
    assert shown["grace_until"] is None


def test_online_refusals(installation: Any, emulator: RunningEmulator) -> None:
    in_use = emulator.issue_key("standard", 5)
    register_elsewhere(emulator, in_use)
    revoked = emulator.issue_key("standard", 5)
    emulator.cli("revoke-key", revoked)
    cases = {
        "MY-REG-KEY": (10, "malformed registration key 'MY-REG-KEY'"),
        "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E": (11, "not known to this authority"),
        in_use: (12, "already registered to another installation"),
        revoked: (13, "revoked"),
        emulator.issue_key("standard", 5, expires="-1d"): (17, "expired"),
    }
    results = {key: installation.run("--register", key) for key in cases}
    results["MY-REG-KEY"] = installation.cli("--register", "MY-REG-KEY")
    for key, (code, text) in cases.items():
        proc = results[key]
        assert (proc.returncode, proc.stdout) == (code, ""), (key, proc.stderr)
        assert proc.stderr.startswith("Registration refused (")
        assert text in proc.stderr, proc.stderr
    assert installation.license()["status"] == "unregistered"


def test_free_key_is_never_registered_offline(installation: Any, emulator: RunningEmulator) -> None:
    free = emulator.issue_key("free")
    offline = unreachable(installation)
    unreachable_free = offline.cli("--register", free)
    forced = installation.run("register", "--offline", free)
    fingerprint = installation.license()["installation_fingerprint"]
    for proc in (unreachable_free, forced):
        assert proc.returncode == 14, proc.stderr
        assert "A free license cannot be registered offline" in proc.stderr
    assert "is unreachable" in unreachable_free.stderr
    assert not (installation.workdir / "regoffline.crg").exists()

    # Even a file signed by the authority is refused when it carries a free license.
    signer = authority_key(emulator.state_dir)
    lic = LicenseTerms(
        "lic-free-file", Tier.FREE, 50, (), fingerprint, datetime.now(UTC), None, parse_key(free).sha256, "offline"
    )
    path = installation.workdir / "free.crg"
    path.write_bytes(write_response("r", signer.sign_license(lic)))
    proc = installation.run("--offline_reg", str(path))
    assert proc.returncode == 14
    assert "A free license cannot be registered offline" in proc.stderr


def test_offline_file_refusals(installation: Any, other_installation: Any, emulator: RunningEmulator) -> None:
    # Requests from this installation and from another one.
    here = installation.run("register", "--offline", emulator.issue_key("standard", 10))
    there = other_installation.run("register", "--offline", emulator.issue_key("standard", 10))
    assert here.returncode == 3 and there.returncode == 3, (here.stderr, there.stderr)
    good = sign(emulator, installation.workdir / "regoffline.crg", installation.workdir / "good.crg")
    foreign = sign(emulator, other_installation.workdir / "regoffline.crg", installation.workdir / "foreign.crg")
    expired_key = emulator.issue_key("standard", 10)
    assert installation.run("register", "--offline", "--request-file", "exp.crg", expired_key).returncode == 3
    expired = sign(emulator, installation.workdir / "exp.crg", installation.workdir / "expired.crg", "--expires", "-1d")

    response = OfflineResponse.decode(good.read_bytes())
    envelope: dict[str, Any] = json.loads(json.dumps(response.envelope))
    envelope["license"]["seats"] = 100000
    tampered = installation.workdir / "tampered.crg"
    tampered.write_bytes(write_response(response.request_id, envelope))
    garbage = installation.workdir / "garbage.crg"
    garbage.write_text("Dear manager, please find attached...")
    wrong_format = installation.workdir / "future.crg"
    wrong_format.write_bytes(encode_crg({"format": "tccal-offline-response/2"}))

    cases = {
        tampered.name: (15, "modified after the authority signed it"),
        foreign.name: (16, "was issued for installation"),
        expired.name: (17, "expired at"),
        garbage.name: (18, "not a registration file"),
        wrong_format.name: (18, "this version reads 'tccal-offline-response/1'"),
        "regoffline.crg": (18, "is an offline registration request"),
        "missing.crg": (18, "cannot read missing.crg"),
    }
    results = {name: installation.run("--offline_reg", name) for name in cases}
    results[tampered.name] = installation.cli("--offline_reg", tampered.name)
    for name, (code, text) in cases.items():
        proc = results[name]
        assert proc.returncode == code, (name, proc.stderr)
        assert text in proc.stderr, (name, proc.stderr)
        assert proc.stdout == ""
    assert installation.license()["status"] == "unregistered"
    # The untouched answer installs.
    proc = installation.run("--offline_reg", good.name)
    assert proc.returncode == 0 and proc.stdout.startswith(REGISTERED_OFFLINE)


def test_configuration_and_database_problems(installation: Any, tmp_path: Path, emulator: RunningEmulator) -> None:
    config = json.loads(installation.config.read_text())
    del config["license"]["testAuthorityPublicKey"]
    no_key = tmp_path / "no-key.json"
    no_key.write_text(json.dumps(config))
    config["license"]["testAuthorityPublicKey"] = "bm90IGEga2V5"
    bad_key = tmp_path / "bad-key.json"
    bad_key.write_text(json.dumps(config))
    del config["license"]["testAuthorityPublicKey"]
    config["license"]["authorityPublicKey"] = emulator.public_key  # the setting that let anyone pick the authority
    old_setting = tmp_path / "old-setting.json"
    old_setting.write_text(json.dumps(config))
    config = json.loads(installation.config.read_text())
    config["dbConnectionConfig"] = {"host": "127.0.0.1", "port": free_port(), "user": "x", "database": "x"}
    no_db = tmp_path / "no-db.json"
    no_db.write_text(json.dumps(config))
    key = emulator.issue_key("standard", 5)
    procs = [installation.run("--register", key, "--config", str(p)) for p in (no_key, bad_key, old_setting, no_db)]
    # Without the test key only the built-in authority key is trusted: the emulator's license is refused.
    assert procs[0].returncode == 15, procs[0].stderr
    assert "not signed by the registration authority" in procs[0].stderr and AUTHORITY_KEY_ID in procs[0].stderr
    shown = installation.run("license", "--json", "--config", str(no_key))
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["status"] == "unregistered"
    assert procs[1].returncode == 2 and "license.testAuthorityPublicKey: authority public key must be 32 bytes" in (
        procs[1].stderr
    )
    # The old setting is gone: a config that names its own authority key is refused, not obeyed.
    assert procs[2].returncode == 2 and "authorityPublicKey" in procs[2].stderr, procs[2].stderr
    assert procs[3].returncode == 4 and "cannot connect to PostgreSQL" in procs[3].stderr


def test_cli_is_the_guides_spelling(installation: Any) -> None:
    """`tc_calendar --register` without a key is a usage error, not a crash."""
    proc = installation.run("--register")
    assert proc.returncode == 2
    assert "Missing argument 'KEY'" in proc.stderr
    assert isinstance(proc, subprocess.CompletedProcess)


def random_fingerprint() -> str:
    """The fingerprint of some other installation (its own install id and machine key)."""
    return Sealer(os.urandom(32)).fingerprint(new_install_id())


def read_only_cwd(directory: Path) -> list[str] | None:
    """A command prefix running a program with `directory` (its working directory) mounted read-only, as in a
    container with a read-only root file system; None where this machine cannot make mount namespaces."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return None
    prefix = [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && cd "$0" && exec "$@"',
        str(directory),
    ]
    probe = subprocess.run([*prefix, "touch", "probe"], capture_output=True, text=True, check=False)
    return prefix if "Read-only file system" in probe.stderr else None


def test_offline_registration_in_a_read_only_working_directory(installation: Any, emulator: RunningEmulator) -> None:
    """A container's file system is read-only: the request goes to standard output (`--request-file -`), the
    answer comes from standard input (`offline-reg -`), and the default file names the way out."""
    prefix = read_only_cwd(installation.workdir)
    if prefix is None:
        pytest.skip("a read-only working directory needs root and mount namespaces (unshare) on this machine")
    offline = unreachable(installation)
    env = {**os.environ, "TC_CALENDAR_CONFIG": str(offline.config)}

    def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*prefix, str(Path(sys.executable).parent / "tc_calendar"), *args],
            input=stdin,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )

    key = emulator.issue_key("standard", 40)
    failed = cli("--register", key)
    assert failed.returncode == InvalidRegistrationFileError.exit_code, failed.stderr
    message = failed.stderr.decode()
    assert f"cannot write {installation.workdir / 'regoffline.crg'}: Read-only file system" in message
    assert "--request-file - > regoffline.crg" in message

    written = cli("register", key, "--request-file", "-")
    assert written.returncode == 3, written.stderr
    assert "Offline registration request written to standard output" in written.stderr.decode()
    request = OfflineRequest.decode(written.stdout, "the request on standard output")  # stdout is the file alone
    assert request.key.text == parse_key(key).text
    assert not (installation.workdir / "regoffline.crg").exists()

    elsewhere = installation.workdir.parent / "authority"
    elsewhere.mkdir()
    (elsewhere / "regoffline.crg").write_bytes(written.stdout)
    response = sign(emulator, elsewhere / "regoffline.crg", elsewhere / "regoffline2.crg")
    installed = cli("offline-reg", "-", stdin=response.read_bytes())
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.decode().splitlines()[0] == REGISTERED_OFFLINE
    shown = offline.license()
    assert (shown["tier"], shown["seats"], shown["status"]) == ("standard", 40, "valid")
