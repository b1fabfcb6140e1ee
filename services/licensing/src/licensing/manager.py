"""The licensing use cases, shared by the gRPC API and the CLI: register, install, show, allocate, check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from licensing.document import SignedLicense, format_timestamp
from licensing.errors import (
    FREE_OFFLINE_MESSAGE,
    ForeignInstallationError,
    FreeOfflineError,
    KeyInUseError,
    KeyRevokedError,
    LicenseExpiredError,
    LicensingError,
    MalformedKeyError,
    RegistrationProtocolError,
    RegistrationUnreachableError,
    TamperedLicenseError,
    UnknownKeyError,
)
from licensing.fingerprint import short_fingerprint
from licensing.keys import RegistrationKey, parse_key
from licensing.metrics import METRICS, LicenseFigures
from licensing.offline import OfflineRequest, OfflineResponse
from licensing.registration_client import RegistrationClient
from licensing.seats import Allocation, SeatAsk, allocate, normalize_mailbox, refuse_all
from licensing.settings import LicensingSettings
from licensing.status import CheckState, Evaluation, Status, evaluate
from licensing.store import InstallationRow, LicenseStore
from licensing.tiers import FEATURE_MULTIPLE_PROVIDERS
from tccal.clock import Clock

log = logging.getLogger("licensing")

# The system clock may lag the high-water mark by this much (replicas, NTP steps) before licensing distrusts it.
CLOCK_TOLERANCE = timedelta(minutes=5)
# The high-water mark is written at most this often (it is kept in memory in between).
HIGH_WATER_STEP = timedelta(minutes=1)
# An online check due within this share of its period counts as due now: a replica's next round is timed from the
# start of its previous one, which was recorded when the registration server had answered (a request later).
CHECK_EARLY = 0.1

# Answers of the registration server that refuse the license itself (no grace period for those).
REFUSALS = (UnknownKeyError, KeyRevokedError, ForeignInstallationError, LicenseExpiredError, KeyInUseError)


@dataclass(frozen=True)
class Snapshot:
    """The license in force, as of ``now``."""

    now: datetime
    install_id: uuid.UUID
    fingerprint: str
    signed: SignedLicense | None
    check: CheckState
    evaluation: Evaluation
    seats_used: int


def observed(snap: Snapshot) -> Snapshot:
    """`snap`, its figures handed to the service's metrics on the way (licensing.metrics)."""
    lic = snap.signed.license if snap.signed is not None else None
    expires = lic.expires_at if lic is not None else None
    METRICS.observe(
        LicenseFigures(
            seats_used=snap.seats_used,
            seats_total=lic.seat_capacity if lic is not None else 0,
            expires_in=None if expires is None else (expires - snap.now).total_seconds(),
            status=snap.evaluation.status,
        )
    )
    return snap


class LicenseManager:
    def __init__(
        self,
        store: LicenseStore,
        settings: LicensingSettings,
        clock: Clock,
        client: RegistrationClient | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.client = client or RegistrationClient(settings.registration_url, timeout=settings.request_timeout)
        self._rollback_reported = False
        # What this process has seen (its own writes included). Rows only move forward, so an older one read
        # later was put back from an earlier copy (a sealed row replayed): the seal alone cannot tell.
        self._high_water_seen: datetime | None = None
        self._check_seen: dict[str, datetime] = {}
        self._verified: dict[str, SignedLicense | str] = {}
        self._changed = asyncio.Event()
        self._last_status: Status | None = None

    # ----------------------------------------------------------------------------------------- identity

    async def identity(self) -> tuple[uuid.UUID, str]:
        """Install id and fingerprint; ``ForeignInstallationError`` when the installation record is not ours."""
        row = await self.store.installation(self.clock.now())
        return row.install_id, self.store.sealer.fingerprint(row.install_id)

    async def now(self) -> datetime:
        """The time licensing decides by: the clock, unless it is earlier than the high-water mark (the latest
        time this installation has seen, kept sealed in the database) by more than CLOCK_TOLERANCE — then the
        high-water mark. Setting the clock back does not bring an expired license or a grace period back."""
        return (await self._time())[0]

    async def _time(self) -> tuple[datetime, InstallationRow, str | None]:
        clock_now = self.clock.now()
        row = await self.store.installation(clock_now)
        mark = max(row.high_water, self._high_water_seen or row.high_water)
        if clock_now >= mark + HIGH_WATER_STEP:
            await self.store.advance_high_water(row.install_id, clock_now)
            mark = clock_now
        self._high_water_seen = mark
        if clock_now >= mark - CLOCK_TOLERANCE:
            self._rollback_reported = False
            return clock_now, row, None
        note = (
            f"the system clock reads {format_timestamp(clock_now)}, earlier than the latest time this installation "
            f"has seen, {format_timestamp(mark)}: the clock was set back, so licensing goes by "
            f"{format_timestamp(mark)}"
        )
        if not self._rollback_reported:
            self._rollback_reported = True
            log.error(note, extra={"clock": clock_now.isoformat(), "high_water": mark.isoformat()})
        return mark, row, note

    # ----------------------------------------------------------------------------------------- installing

    def _validate(
        self, envelope: Any, fingerprint: str, now: datetime, *, offline: bool, key: RegistrationKey | None
    ) -> SignedLicense:
        """Signature, installation, tier, expiry — in that order, each with its own refusal."""
        signed = self.settings.authorities().verify_envelope(envelope)
        lic = signed.license
        if lic.installation_fingerprint != fingerprint:
            raise ForeignInstallationError(
                f"this license ({lic.license_id}) was issued for installation "
                f"{short_fingerprint(lic.installation_fingerprint)}, but this installation is "
                f"{short_fingerprint(fingerprint)}; ask for a license with a request made here "
                "(tc_calendar --register KEY)"
            )
        if offline and not lic.tier.offline_registration:
            raise FreeOfflineError(FREE_OFFLINE_MESSAGE)
        if lic.expires_at is not None and now >= lic.expires_at:
            raise LicenseExpiredError(
                f"the license {lic.license_id} ({lic.tier.label}) expired at {format_timestamp(lic.expires_at)}"
            )
        if key is not None and lic.key_sha256 != key.sha256:
            raise RegistrationProtocolError(
                "the registration server answered with a license for another key; nothing was installed"
            )
        return signed

    async def register_online(self, key_text: str) -> SignedLicense:
        key = parse_key(key_text)
        _, fingerprint = await self.identity()
        envelope = await self.client.register(key.text, fingerprint, self.settings.product_version)
        now = await self.now()
        try:
            signed = self._validate(envelope, fingerprint, now, offline=False, key=key)
        except TamperedLicenseError as exc:
            raise TamperedLicenseError(f"the registration server's answer was refused: {exc.message}") from None
        await self.store.install_license(signed, now, confirmed_online=True)
        self._installed(signed, "online")
        return signed

    async def create_offline_request(self, key_text: str) -> OfflineRequest:
        key = parse_key(key_text)
        if not key.tier.offline_registration:
            raise FreeOfflineError(FREE_OFFLINE_MESSAGE)
        _, fingerprint = await self.identity()
        request = OfflineRequest.new(key, fingerprint, await self.now(), self.settings.product_version)
        log.info(
            "offline registration request created",
            extra={"request_id": request.request_id, "key": key.masked(), "installation": fingerprint[:16]},
        )
        return request

    async def install_offline(self, data: bytes, what: str = "the registration file") -> SignedLicense:
        response = OfflineResponse.decode(data, what)
        _, fingerprint = await self.identity()
        now = await self.now()
        signed = self._validate(response.envelope, fingerprint, now, offline=True, key=None)
        await self.store.install_license(signed, now, confirmed_online=False)
        self._installed(signed, "offline")
        return signed

    def _installed(self, signed: SignedLicense, how: str) -> None:
        lic = signed.license
        log.info(
            f"license {lic.license_id} installed ({how}): {lic.tier.label}, {lic.seats} seats",
            extra={"license_id": lic.license_id, "tier": lic.tier.value, "seats": lic.seats},
        )
        self._changed.set()

    # ----------------------------------------------------------------------------------------- state

    def _verify_stored(self, envelope: str) -> SignedLicense | str:
        """Verify the stored document (cached by its exact text, so any change to the row is re-verified)."""
        cached = self._verified.get(envelope)
        if cached is None:
            try:
                cached = self.settings.authorities().verify_envelope_text(envelope)
            except LicensingError as exc:
                cached = exc.message
            self._verified = {envelope: cached}
        return cached

    async def snapshot(self) -> Snapshot:
        try:
            now, row, clock_note = await self._time()
        except ForeignInstallationError as exc:
            now = self.clock.now()
            evaluation = Evaluation(Status.SUSPENDED, exc.message, None, 0)
            seats_used = await self.store.seats_used(now)
            return observed(Snapshot(now, uuid.UUID(int=0), "", None, CheckState(), evaluation, seats_used))
        install_id, fingerprint = row.install_id, self.store.sealer.fingerprint(row.install_id)
        stored = await self.store.active_license()
        signed: SignedLicense | None = None
        check = CheckState()
        if stored is None:
            evaluation = evaluate(None, fingerprint, check, now, self.settings.grace_period, self.client.url)
        else:
            verified = self._verify_stored(stored.envelope)
            if isinstance(verified, str):
                evaluation = Evaluation(
                    Status.SUSPENDED,
                    f"the stored license {stored.license_id} failed verification ({verified}); register again",
                    None,
                    0,
                )
            elif verified.license.installation_fingerprint == fingerprint and not stored.sealed:
                # Signed by the authority for this installation, but the row around it was edited (another
                # license of ours made active again, its columns changed): not the license this installation
                # installed.
                evaluation = Evaluation(
                    Status.SUSPENDED,
                    f"the stored license row of {stored.license_id} was changed outside the connector (its seal "
                    "does not verify with this installation's machine key); register again",
                    None,
                    0,
                )
            else:
                signed = verified
                lic = signed.license
                record = await self.store.check_state(lic.license_id)
                check = record.state
                seen = self._check_seen.get(lic.license_id)
                # (Replicas' clocks may differ by up to CLOCK_TOLERANCE; a copy put back is older than that.)
                attempt = record.last_attempt
                replayed = seen is not None and attempt is not None and attempt < seen - CLOCK_TOLERANCE
                if record.sealed and not replayed and record.last_attempt is not None:
                    self._check_seen[lic.license_id] = max(record.last_attempt, seen or record.last_attempt)
                evaluation = evaluate(signed, fingerprint, check, now, self.settings.grace_period, self.client.url)
                if lic.tier.requires_online_check and (replayed or not record.sealed) and evaluation.may_sync:
                    # A revoked Free license revived by editing its check record: the next check asks again.
                    check = CheckState()
                    evaluation = Evaluation(
                        Status.SUSPENDED,
                        f"the online check record of the Free license {lic.license_id} was changed outside the "
                        "connector ("
                        + (
                            "an older copy of it was put back"
                            if replayed
                            else "its seal does not verify with this installation's machine key"
                        )
                        + "); sync is stopped until the registration server confirms the license again",
                        None,
                        0,
                    )
        if clock_note is not None:
            evaluation = Evaluation(
                evaluation.status,
                f"{evaluation.reason} ({clock_note})",
                evaluation.grace_until,
                evaluation.seat_capacity,
            )
        seats_used = await self.store.seats_used(now)
        return observed(Snapshot(now, install_id, fingerprint, signed, check, evaluation, seats_used))

    # ----------------------------------------------------------------------------------------- seats

    async def allocate_seats(self, asks: Iterable[SeatAsk], providers: int) -> tuple[Allocation, Snapshot]:
        # Configured users come first for seats. Which mailboxes are configured is this service's own config
        # (calendarProviders[].users), never the caller's `configured` flag: a caller flagging made-up mailboxes
        # as configured took real users' seats (issue #17).
        configured_users = self.settings.configured_users
        marked = [SeatAsk(a.mailbox, normalize_mailbox(a.mailbox) in configured_users) for a in asks]
        snap = await self.snapshot()
        lic = snap.signed.license if snap.signed is not None else None
        if not snap.evaluation.may_sync or lic is None:
            return Allocation(refused=refuse_all(marked, snap.evaluation.reason)), snap
        if providers > 1 and not lic.has_feature(FEATURE_MULTIPLE_PROVIDERS):
            reason = (
                f"{providers} Exchange providers are configured, but several providers need the feature "
                f"'{FEATURE_MULTIPLE_PROVIDERS}' (Enterprise license); this {lic.tier.label} license does not "
                "include it"
            )
            log.error(reason, extra={"providers": providers, "tier": lic.tier.value})
            return Allocation(refused=refuse_all(marked, reason)), snap
        async with self.store.seat_transaction() as tx:
            before = await tx.holdings()
            # a holder's stored flag is re-read from the config too (it may come from a caller's flag of old)
            held = {m: replace(h, configured=m in configured_users) for m, h in before.items()}
            result = allocate(marked, held, snap.evaluation.seat_capacity, snap.now, self.settings.seat_lease)
            await tx.replace(before, result.holdings)
        if result.revoked:
            log.warning(
                "seats taken back from on-demand mailboxes for configured users",
                extra={"revoked": ",".join(result.revoked)},
            )
        if result.refused:
            log.info(
                f"{len(result.refused)} mailbox(es) refused a seat: {result.refused[0].reason}",
                extra={"granted": len(result.granted), "refused": len(result.refused)},
            )
        final = Snapshot(
            snap.now, snap.install_id, snap.fingerprint, snap.signed, snap.check, snap.evaluation, result.seats_used
        )
        return result, observed(final)

    async def seat_leases(self) -> tuple[dict[str, timedelta], Snapshot]:
        """Every mailbox holding a seat now and how long its lease still runs (sync-engine shows only these).

        Nothing while the license does not let the connector sync. No more than the license's seats, ranked as
        `allocate` ranks holders; no lease longer than one lease from now (a row edited to last for years does
        not), nor beyond the license's own end (its expiry, a Free grace period)."""
        snap = await self.snapshot()
        lic = snap.signed.license if snap.signed is not None else None
        if not snap.evaluation.may_sync or lic is None:
            return {}, snap
        async with self.store.seat_transaction() as tx:
            held = await tx.holdings()
        kept = allocate([], held, snap.evaluation.seat_capacity, snap.now, self.settings.seat_lease).holdings
        ends = [snap.now + self.settings.seat_lease]
        ends += [moment for moment in (lic.expires_at, snap.evaluation.grace_until) if moment is not None]
        leases = {}
        for mailbox, holding in kept.items():
            until = min([holding.expires_at, *ends])
            if until > snap.now:
                leases[mailbox] = until - snap.now
        return leases, snap

    # ----------------------------------------------------------------------------------------- online checks

    async def check_online(self) -> Snapshot:
        """Confirm a Free license with the registration server (no-op for other tiers) when a check is due; returns
        the state. Replicas take turns (a PostgreSQL advisory lock) and a check another replica made within the
        period counts for all: N replicas make one registration-server call per period, not N."""
        async with self.store.online_check_turn():
            snap = await self.snapshot()
            signed = snap.signed
            if signed is None or not signed.license.tier.requires_online_check:
                return snap
            if snap.evaluation.status is Status.EXPIRED or signed.license.installation_fingerprint != snap.fingerprint:
                return snap
            if not await self._check_due(snap, signed):
                return snap
            return await self._check(snap, signed)

    async def _check_due(self, snap: Snapshot, signed: SignedLicense) -> bool:
        """Whether the last recorded check (by any replica) is a period old: the period this installation's state
        asks for (`_next_delay`), less CHECK_EARLY of it. A record that does not verify, or that names a time
        beyond any this installation has seen, is no reason to wait."""
        record = await self.store.check_state(signed.license.license_id)
        last = record.last_attempt
        if not record.sealed or last is None or last > snap.now + CLOCK_TOLERANCE:
            return True
        return snap.now >= last + self._next_delay(snap) * (1 - CHECK_EARLY)

    async def _check(self, snap: Snapshot, signed: SignedLicense) -> Snapshot:
        """Ask the registration server about the license now and record the answer."""
        lic = signed.license
        nonce = secrets.token_hex(16)
        try:
            answer = await self.client.check(lic.license_id, lic.key_sha256, snap.fingerprint, nonce)
            receipt = self.settings.authorities().verify_receipt(answer)
            if (receipt.nonce, receipt.license_id, receipt.installation_fingerprint) != (
                nonce,
                lic.license_id,
                snap.fingerprint,
            ):
                raise RegistrationProtocolError("the registration server's check answer is for another question")
        except REFUSALS as exc:
            await self.store.record_check(lic.license_id, await self.now(), success=False, refusal=exc.message)
        except (RegistrationUnreachableError, RegistrationProtocolError, MalformedKeyError) as exc:
            await self.store.record_check(lic.license_id, await self.now(), success=False, error=exc.message)
        else:
            await self.store.record_check(lic.license_id, await self.now(), success=True)
        return await self.snapshot()

    def report(self, snap: Snapshot) -> None:
        """Log a line whenever the license status changes (suspension and recovery are the ones that matter)."""
        status = snap.evaluation.status
        if status is self._last_status:
            return
        previous = self._last_status
        self._last_status = status
        extra = {"status": status.value, "reason": snap.evaluation.reason}
        text = f"license {status.value}: {snap.evaluation.reason}"
        if status is Status.SUSPENDED or status is Status.EXPIRED:
            log.error(f"sync stopped — {text}", extra=extra)
        elif status is Status.GRACE or status is Status.UNREGISTERED:
            log.warning(text, extra=extra)
        elif previous in (Status.SUSPENDED, Status.GRACE, Status.EXPIRED):
            log.info(f"sync resumes — {text}", extra=extra)
        else:
            log.info(text, extra=extra)

    def _next_delay(self, snap: Snapshot) -> timedelta:
        signed = snap.signed
        if signed is None or not signed.license.tier.requires_online_check or snap.evaluation.status is Status.VALID:
            delay = self.settings.check_interval
        else:
            delay = self.settings.retry_interval
        ends = [snap.evaluation.grace_until, signed.license.expires_at if signed else None]
        for moment in ends:
            if moment is not None and moment > snap.now:
                delay = min(delay, moment - snap.now)
        return max(delay, timedelta(seconds=1))

    async def run_checks(self, stop: asyncio.Event) -> None:
        """Background loop: online checks of a Free license, status changes logged, until ``stop``."""
        while not stop.is_set():
            self._changed.clear()
            started = self.clock.now()
            try:
                snap = await self.check_online()
            except LicensingError as exc:  # storage trouble: say so, try again soon
                log.warning(f"license check skipped: {exc.message}")
                delay = self.settings.retry_interval
            else:
                self.report(snap)
                delay = self._next_delay(snap)
            # The next round is due `delay` after this one started, however long this one took.
            remaining = max((started + delay - self.clock.now()).total_seconds(), 0.0)
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(self.clock.sleep(remaining)),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
