"""The authority's commands: keygen, public-key, issue-key, revoke-key, list-keys, sign-offline.

The registration emulator is licensing's peer: what its commands write (keys, public keys, signed offline
answers) is read here with licensing's own parsing and verification, so the two agree through
docs/license-format.md and not through shared code. (Moved from emulators/registration/tests, which no longer
import licensing.)"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from licensing.document import TrustedAuthorities
from licensing.fingerprint import new_install_id
from licensing.keys import parse_key
from licensing.offline import OfflineRequest, OfflineResponse
from licensing.sealing import Sealer
from licensing.tiers import Tier
from registration_emulator.testing import run_cli

# docs/license-format.md §3: the features the authority grants with each tier.
GRANTED_FEATURES = {
    "free": [],
    "standard": ["offline_registration"],
    "enterprise": ["multiple_providers", "offline_registration"],
}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    run_cli(tmp_path / "st", "keygen")
    return tmp_path / "st"


def test_keygen_prints_the_public_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    st = tmp_path / "st"
    public = run_cli(st, "keygen").stdout.strip()
    assert TrustedAuthorities.from_config(public).key_ids
    assert run_cli(st, "public-key").stdout.strip() == public
    assert (st / "authority_ed25519.pub").read_text().strip() == public
    assert (st / "authority_ed25519.pem").stat().st_mode & 0o077 == 0
    again = run_cli(st, "keygen", check=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr and public in again.stderr
    replaced = run_cli(st, "keygen", "--force").stdout.strip()
    assert replaced != public


def test_commands_without_a_key_say_to_run_keygen(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "empty", "issue-key", "--tier", "standard", "--seats", "5", check=False)
    assert proc.returncode == 1
    assert "keygen" in proc.stderr


@pytest.mark.parametrize(("tier", "seats"), [("free", None), ("standard", 120), ("enterprise", 5000)])
def test_issue_key_of_each_tier(state: Path, tier: str, seats: int | None) -> None:
    args = ["issue-key", "--tier", tier, "--json"] + ([] if seats is None else ["--seats", str(seats)])
    info = json.loads(run_cli(state, *args).stdout)
    key = parse_key(info["key"])
    assert key.tier is Tier(tier)
    assert info["seats"] == (seats or 50)
    assert info["features"] == GRANTED_FEATURES[tier]
    assert info["expires_at"] is None
    listed = json.loads(run_cli(state, "list-keys").stdout)
    assert [k["key"] for k in listed] == [key.text]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tier", "free", "--seats", "60"], "always has 50 seats, not 60"),
        (["--tier", "standard"], "--seats is required"),
        (["--tier", "standard", "--seats", "0"], "at least 1"),
        (["--tier", "gold", "--seats", "1"], "'gold' is not one of"),
        (["--tier", "standard", "--seats", "1", "--expires", "soon"], "'soon' is not 'never'"),
    ],
)
def test_issue_key_refusals(state: Path, args: list[str], expected: str) -> None:
    proc = run_cli(state, "issue-key", *args, check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr


def test_expiry_forms(state: Path) -> None:
    dated = json.loads(
        run_cli(state, "issue-key", "--tier", "standard", "--seats", "1", "--expires", "2099-01-31", "--json").stdout
    )
    assert dated["expires_at"] == "2099-01-31T00:00:00+00:00"
    past = run_cli(state, "issue-key", "--tier", "standard", "--seats", "1", "--expires", "-1d", "--json")
    assert "already expired" in past.stderr
    assert datetime.fromisoformat(json.loads(past.stdout)["expires_at"]) < datetime.now(UTC)


def _request(tmp_path: Path, key: str, name: str = "regoffline.crg") -> tuple[Path, str]:
    fingerprint = Sealer(os.urandom(32)).fingerprint(new_install_id())
    path = tmp_path / name
    path.write_bytes(OfflineRequest.new(parse_key(key), fingerprint, datetime.now(UTC), "1.0.0").encode())
    return path, fingerprint


def test_sign_offline_answers_a_paid_request(state: Path, tmp_path: Path) -> None:
    public = run_cli(state, "public-key").stdout.strip()
    key = run_cli(state, "issue-key", "--tier", "enterprise", "--seats", "300").stdout.strip()
    request, fingerprint = _request(tmp_path, key)
    out = tmp_path / "regoffline2.crg"
    proc = run_cli(state, "sign-offline", str(request), "-o", str(out))
    assert str(out) in proc.stdout
    response = OfflineResponse.decode(out.read_bytes())
    lic = TrustedAuthorities.from_config(public).verify_envelope(response.envelope).license
    assert lic.tier is Tier.ENTERPRISE and lic.seats == 300
    assert lic.installation_fingerprint == fingerprint
    assert lic.registration == "offline"
    assert lic.key_sha256 == parse_key(key).sha256
    assert response.request_id == OfflineRequest.decode(request.read_bytes()).request_id


def test_sign_offline_refusals(state: Path, tmp_path: Path) -> None:
    free = run_cli(state, "issue-key", "--tier", "free").stdout.strip()
    request, _ = _request(tmp_path, free)
    proc = run_cli(state, "sign-offline", str(request), "-o", str(tmp_path / "out.crg"), check=False)
    assert proc.returncode == 1
    assert "A free license cannot be registered offline" in proc.stderr
    assert not (tmp_path / "out.crg").exists()

    unknown, _ = _request(tmp_path, "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E", "unknown.crg")
    proc = run_cli(state, "sign-offline", str(unknown), "-o", str(tmp_path / "out.crg"), check=False)
    assert "not known to this authority" in proc.stderr

    garbage = tmp_path / "garbage.crg"
    garbage.write_text("hello")
    proc = run_cli(state, "sign-offline", str(garbage), "-o", str(tmp_path / "out.crg"), check=False)
    assert "not a registration file" in proc.stderr

    std = run_cli(state, "issue-key", "--tier", "standard", "--seats", "5").stdout.strip()
    first, _ = _request(tmp_path, std, "a.crg")
    run_cli(state, "sign-offline", str(first), "-o", str(tmp_path / "a2.crg"))
    second, _ = _request(tmp_path, std, "b.crg")
    proc = run_cli(state, "sign-offline", str(second), "-o", str(tmp_path / "b2.crg"), check=False)
    assert "already registered to another installation" in proc.stderr

    run_cli(state, "revoke-key", std)
    proc = run_cli(state, "sign-offline", str(first), "-o", str(tmp_path / "a3.crg"), check=False)
    assert "revoked" in proc.stderr


def test_sign_offline_with_an_own_term(state: Path, tmp_path: Path) -> None:
    public = run_cli(state, "public-key").stdout.strip()
    key = run_cli(state, "issue-key", "--tier", "standard", "--seats", "5").stdout.strip()
    request, _ = _request(tmp_path, key)
    out = tmp_path / "expired.crg"
    proc = run_cli(state, "sign-offline", str(request), "-o", str(out), "--expires", "-2d")
    assert "already expired" in proc.stderr
    lic = TrustedAuthorities.from_config(public).verify_envelope(OfflineResponse.decode(out.read_bytes()).envelope)
    assert lic.license.expires_at is not None and lic.license.expires_at < datetime.now(UTC)
