"""Conferences on TrueConf Server through REST API v4: create/update, delete, run/stop, invitations.

Idempotency: a meeting's conference has a deterministic id (`conference_id_for(meeting_id)`), and every
create first asks `GET /conferences/{id}`: a command delivered twice finds the conference the first delivery
made and only brings it up to date (real TrueConf Servers have no idempotency key; a client-chosen id is one,
since a second create with the same id is refused - 409, or 400 `uniqueValueAlreadyInUse` as TrueConf Server
answers - which is handled the same way).
Updates send only the fields that differ, so an unchanged conference is never touched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tcs_gateway.rest.http import Response, RestClient, RestError
from tcs_gateway.rest.users import UserDirectory
from tcs_gateway.settings import GatewaySettings, ServerSettings
from trueconf.calendar.v1 import commands_pb2, common_pb2

log = logging.getLogger(__name__)

MODES = {
    common_pb2.CONFERENCE_MODE_SMART_MEETING: "S|L Auto",
    common_pb2.CONFERENCE_MODE_MODERATED: "S|L",
    common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN: "PxP",
    common_pb2.CONFERENCE_MODE_VIDEO_LECTURE: "OxP",
}
ACCESS = {
    common_pb2.CONFERENCE_ACCESS_PRIVATE: "private",
    common_pb2.CONFERENCE_ACCESS_PUBLIC: "public",
}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MIN_DURATION = 60
MAX_DURATION = 86_399
MAX_START_TIME = 4_102_444_800
TOPIC_LIMIT = 240
_SETTINGS_FIELDS = ("waiting_room_enabled", "recording_enabled", "on_join_mute_mic", "on_join_mute_camera")


def conference_id_for(meeting_id: str) -> str:
    """The conference id of a meeting: stable, `[A-Za-z0-9_]`, the same on every delivery and restart."""
    return "tcc_" + hashlib.sha256(meeting_id.encode("utf-8")).hexdigest()[:28]


@dataclass(frozen=True)
class Invitation:
    id: str
    display_name: str | None

    def body(self) -> dict[str, str]:
        entry = {"id": self.id}
        if self.display_name:
            entry["display_name"] = self.display_name
        return entry


def schedule_body(schedule: commands_pb2.ConferenceSchedule) -> dict[str, Any]:
    """TrueConf's `schedule`: the full field set it demands per type - start_time (unix s), `time` (its UTC
    HH:MM), special_time_offset (the meeting zone's UTC offset in minutes at the start), duration, and `days` for
    a weekly one (trueconf-server-mcp's schedule_utils: the server refuses a schedule missing any of them)."""
    if schedule.type == commands_pb2.SCHEDULE_TYPE_NONE or not schedule.HasField("start"):
        return {"type": "none"}
    start = int(schedule.start.seconds)
    if not 1 <= start <= MAX_START_TIME:
        return {"type": "none"}
    duration = max(MIN_DURATION, min(MAX_DURATION, int(schedule.duration_seconds)))
    moment = datetime.fromtimestamp(start, UTC)
    body: dict[str, Any] = {
        "type": "once",
        "start_time": start,
        "duration": duration,
        "time": moment.strftime("%H:%M"),
        "special_time_offset": utc_offset_minutes(schedule.time_zone, moment),
    }
    if schedule.type == commands_pb2.SCHEDULE_TYPE_WEEK:
        body["type"] = "week"
        body["days"] = [WEEKDAYS[moment.weekday()]]
    return body


def utc_offset_minutes(zone_name: str, moment: datetime) -> int:
    """The UTC offset of `zone_name` at `moment`, in minutes (0 for UTC, an empty or an unknown zone)."""
    if not zone_name:
        return 0
    try:
        offset = ZoneInfo(zone_name).utcoffset(moment)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone for a conference schedule; UTC is used", extra={"time_zone": zone_name})
        return 0
    return int(offset.total_seconds() // 60) if offset is not None else 0


def parse_timestamp(value: Any) -> int | None:
    """A TrueConf timestamp as unix seconds: answers carry them as numbers, numeric strings or ISO 8601 strings
    (trueconf-eraser's parse_timestamp and trueconf-server-mcp's parse_schedule_output_time accept all three);
    None when it is none of them."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _same_schedule(current: Any, desired: dict[str, Any]) -> bool:
    """Whether the server's schedule already is `desired`. The server answers no `time` (start_time carries it)
    and may answer start_time as a string."""
    if not isinstance(current, dict) or current.get("type") != desired["type"]:
        return False
    if desired["type"] == "none":
        return True
    if parse_timestamp(current.get("start_time")) != desired["start_time"]:
        return False
    keys = ("duration", "days", "special_time_offset")
    return all(current.get(key) == desired.get(key) for key in keys)


def _already_exists(response: Response) -> bool:
    """A create refused because the id (or invitee) is taken: 409, or TrueConf Server's 400
    `uniqueValueAlreadyInUse` (the emulator answers the latter, as the real server does; both are accepted)."""
    return response.status == 409 or _is(response, 400, "uniqueValueAlreadyInUse")


class ConferenceService:
    def __init__(
        self, server: ServerSettings, settings: GatewaySettings, client: RestClient, users: UserDirectory
    ) -> None:
        self.server = server
        self.settings = settings
        self.client = client
        self.users = users

    def url(self, conference_id: str) -> str:
        return f"https://{self.server.host}/c/{conference_id}"

    def _canonical(self, reference: str) -> str:
        """Compare invitations: user ids and TrueConf IDs (`id@server`) alike, e-mails case-insensitively."""
        text = reference.strip().lower()
        suffix = f"@{self.server.host.lower()}"
        return text[: -len(suffix)] if text.endswith(suffix) else text

    # ------------------------------------------------------------------ reading
    async def get(self, conference_id: str) -> dict[str, Any] | None:
        response = await self.client.request("GET", f"/conferences/{quote(conference_id)}", route="/conferences/{id}")
        if response.status == 404:
            return None
        conference = response.body.get("conference") if isinstance(response.body, dict) else None
        if response.status != 200 or not isinstance(conference, dict):
            raise response.failure(f"reading conference {conference_id}")
        return conference

    async def _require(self, conference_id: str) -> dict[str, Any]:
        conference = await self.get(conference_id)
        if conference is None:
            raise RestError(
                f"conference {conference_id} does not exist on TrueConf Server {self.server.id}",
                status=404,
                reason="conferenceNotFound",
            )
        return conference

    # ------------------------------------------------------------------ desired state
    async def _desired(self, upsert: commands_pb2.ConferenceUpsert) -> dict[str, Any]:
        owner = await self.users.by_email(upsert.owner)
        if owner is None:
            raise RestError(
                f"conference owner {upsert.owner!r} is not a user of TrueConf Server {self.server.id}",
                reason="ownerNotFound",
            )
        spec = upsert.spec
        mode = MODES.get(spec.mode, self.settings.conference_defaults.mode)
        access = ACCESS.get(spec.access, self.settings.conference_defaults.access)
        topic = (upsert.topic.strip() or "TrueConf meeting")[:TOPIC_LIMIT]
        body: dict[str, Any] = {
            "topic": topic,
            "owner": owner.id,
            "mode": mode,
            "access": access,
            "schedule": schedule_body(upsert.schedule),
            "pin": spec.pin or None,
            "waiting_room_enabled": bool(spec.waiting_room_enabled),
            "recording_enabled": bool(spec.recording_enabled),
            "on_join_mute_mic": bool(spec.mute_mic_on_join),
            "on_join_mute_camera": bool(spec.mute_camera_on_join),
        }
        if spec.max_participants > 0:
            body["max_participants"] = int(spec.max_participants)
        if spec.max_podiums > 0 and mode in ("S|L", "S|L Auto"):
            body["max_podiums"] = int(spec.max_podiums)
        return body

    def _changes(self, current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for key, value in desired.items():
            have = current.get(key)
            if key == "schedule":
                same = _same_schedule(have, value)
            elif key == "pin":
                same = (have or None) == (value or None)
            elif key == "owner":
                same = isinstance(have, str) and self._canonical(have) == self._canonical(value)
            else:
                same = have == value
            if not same:
                changes[key] = value
        return changes

    async def invitations_for(self, invitees: Sequence[commands_pb2.Invitee], access: str) -> list[Invitation]:
        """TrueConf users by id; others as guests (e-mail) where the conference is public, else left out."""
        found: dict[str, Invitation] = {}
        for invitee in invitees:
            email = invitee.email.strip().lower()
            if not email:
                continue
            user = await self.users.by_email(email)
            if user is not None:
                found.setdefault(self._canonical(user.id), Invitation(user.id, None))
            elif access == "public":
                found.setdefault(email, Invitation(email, (invitee.display_name or email)[:256]))
            else:
                log.info(
                    "attendee is not a TrueConf user and the conference is private: not invited",
                    extra={"server": self.server.id, "attendee": email},
                )
        return list(found.values())

    # ------------------------------------------------------------------ commands
    async def upsert(self, upsert: commands_pb2.ConferenceUpsert) -> str:
        conference_id = upsert.conference_id or conference_id_for(upsert.meeting_id)
        desired = await self._desired(upsert)
        current = await self.get(conference_id)
        if current is None:
            body: dict[str, Any] = {"id": conference_id, **{k: v for k, v in desired.items() if v is not None}}
            if upsert.sync_invitations:
                invitations = await self.invitations_for(upsert.invitations, desired["access"])
                body["invitations"] = [invitation.body() for invitation in invitations]
            response = await self.client.request("POST", "/conferences", route="/conferences", body=body)
            if response.status == 200:
                log.info("conference created", extra={"server": self.server.id, "conference": conference_id})
                return conference_id
            if not _already_exists(response):
                raise response.failure(f"creating conference {conference_id}")
            current = await self._require(conference_id)  # created meanwhile: bring it up to date
        changes = self._changes(current, desired)
        if changes:
            if current.get("state") == "running":
                raise RestError(
                    f"conference {conference_id} is running; {', '.join(sorted(changes))} will be updated after it "
                    "stops",
                    reason="conferenceIsRunning",
                    retryable=True,
                )
            response = await self.client.request(
                "PATCH", f"/conferences/{quote(conference_id)}", route="/conferences/{id}", body=changes
            )
            if response.status != 200:
                raise response.failure(f"updating conference {conference_id}")
        if upsert.sync_invitations:
            await self.sync_invitations(conference_id, upsert.invitations, str(desired["access"]))
        return conference_id

    async def sync_invitations(
        self, conference_id: str, invitees: Sequence[commands_pb2.Invitee], access: str | None = None
    ) -> None:
        """Make the conference's invitations equal to `invitees` (adds and removes)."""
        if access is None:
            access = str((await self._require(conference_id)).get("access", "private"))
        wanted = {self._canonical(i.id): i for i in await self.invitations_for(invitees, access)}
        path = f"/conferences/{quote(conference_id)}/invitations"
        response = await self.client.request("GET", path, route="/conferences/{id}/invitations")
        listed = response.body.get("invitations") if isinstance(response.body, dict) else None
        if response.status != 200 or not isinstance(listed, list):
            raise response.failure(f"reading the invitations of conference {conference_id}")
        present: dict[str, str] = {}
        for entry in listed:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                present[self._canonical(entry["id"])] = entry["id"]
        for key, raw in present.items():
            if key in wanted:
                continue
            gone = await self.client.request(
                "DELETE", f"{path}/{quote(raw, safe='@')}", route="/conferences/{id}/invitations/{participant}"
            )
            if gone.status not in (200, 204, 404):
                raise gone.failure(f"removing {raw} from conference {conference_id}")
        for key, invitation in wanted.items():
            if key in present:
                continue
            added = await self.client.request(
                "POST", path, route="/conferences/{id}/invitations", body=invitation.body()
            )
            if added.status not in (200, 201) and not _already_exists(added):
                raise added.failure(f"inviting {invitation.id} to conference {conference_id}")

    async def run(self, run: commands_pb2.ConferenceRun) -> str:
        conference_id = run.conference_id or conference_id_for(run.meeting_id)
        if run.invitations:
            await self.sync_invitations(conference_id, run.invitations)
        response = await self.client.request(
            "POST", f"/conferences/{quote(conference_id)}/run", route="/conferences/{id}/run"
        )
        if response.status == 200 or _is(response, 400, "conferenceIsAlreadyRunning"):
            return conference_id
        raise response.failure(f"running conference {conference_id}")

    async def stop(self, conference_id: str) -> None:
        response = await self.client.request(
            "POST", f"/conferences/{quote(conference_id)}/stop", route="/conferences/{id}/stop"
        )
        if response.status == 200 or _is(response, 400, "conferenceIsNotRunning") or response.status == 404:
            return
        raise response.failure(f"stopping conference {conference_id}")

    async def delete(self, delete: commands_pb2.ConferenceDelete) -> str:
        conference_id = delete.conference_id or conference_id_for(delete.meeting_id)
        current = await self.get(conference_id)
        if current is None:
            return conference_id  # already gone
        if current.get("state") == "running":
            await self.stop(conference_id)
        response = await self.client.request(
            "DELETE", f"/conferences/{quote(conference_id)}", route="/conferences/{id}"
        )
        if response.status in (200, 204, 404):
            log.info("conference deleted", extra={"server": self.server.id, "conference": conference_id})
            return conference_id
        raise response.failure(f"deleting conference {conference_id}")

    async def invitations(self, sync: commands_pb2.InvitationsSync) -> str:
        conference_id = sync.conference_id or conference_id_for(sync.meeting_id)
        await self.sync_invitations(conference_id, sync.invitations)
        return conference_id


def _is(response: Response, status: int, reason: str) -> bool:
    return response.status == status and response.reason == reason
