"""The meeting model: from the stored copies of one iCalendar UID to what every user sees and what the
meeting's conference should be. Pure functions: no I/O, no clock (times are passed in).

Rules (docs/architecture.md §4.3, §5.2):
* The organizer's copy rules the meeting (subject, time, attendees, recurrence, conference). Without it,
  the best attendee copy stands in (highest AppointmentSequenceNumber, then LastModified, then mailbox).
  If the organizer deleted their copy, the meeting is cancelled (its last known state is kept for display).
* Each attendee's own copy rules that attendee's answer (``my_response``); the attendee list shown carries
  those answers.
* A user sees the meeting when their mailbox holds a copy, or when they are its organizer or an attendee
  and are a known user (a synced mailbox or listed in ``calendarProviders[].users``) who has not deleted
  their own copy. An attendee deleting an occurrence of their copy hides that occurrence for them only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sync_engine.ids import occurrence_id, set_timestamp, to_datetime
from sync_engine.recurrence import ExpandedOccurrence, RecurrenceError, expand_event
from sync_engine.settings import EngineSettings
from sync_engine.timezones import UnknownTimeZoneError, resolve_zone
from tccal.cache_window import SERIES_HORIZON
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, common_pb2

log = logging.getLogger(__name__)

SINGLE = calendar_pb2.ITEM_KIND_SINGLE
MASTER = calendar_pb2.ITEM_KIND_RECURRING_MASTER
MAIN_KINDS = frozenset({SINGLE, MASTER, calendar_pb2.ITEM_KIND_UNSPECIFIED})
ORGANIZER = common_pb2.RESPONSE_TYPE_ORGANIZER
#: Answers that say nothing: an attendee copy holding one does not override what the organizer's copy knows
#: (Exchange records a decline in the organizer's list and removes the decliner's own copy).
_UNANSWERED = frozenset(
    {
        common_pb2.RESPONSE_TYPE_UNSPECIFIED,
        common_pb2.RESPONSE_TYPE_UNKNOWN,
        common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED,
    }
)
#: How far past the cache window the next occurrence of a series is looked for (conference schedule); defined once in
#: tccal because graph-ingest lists a series' cancelled occurrences up to as far.
NEXT_OCCURRENCE_HORIZON = SERIES_HORIZON


@dataclass(frozen=True)
class Window:
    """The cache window [start, end) of UTC instants."""

    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        if end <= start:
            return self.start <= start < self.end
        return start < self.end and end > self.start


@dataclass(frozen=True)
class StoredItem:
    """One row of `items`: a live copy, or a tombstone keeping the last state it had."""

    mailbox: str
    item_id: str
    kind: int
    recurrence_id: datetime | None
    deleted: bool
    was_organizer: bool
    event: calendar_pb2.CalendarEvent | None


@dataclass(frozen=True)
class OccurrenceCore:
    """One occurrence as the meeting defines it (before the viewer's answer and privacy are applied)."""

    id: str
    original_start: datetime
    start: datetime
    end: datetime
    subject: str
    body: str
    location: str
    cancelled: bool
    all_day: bool
    recurring: bool


@dataclass
class MeetingView:
    meeting_id: str
    uid: str
    base: calendar_pb2.CalendarEvent | None = None
    base_mailbox: str = ""
    #: The base is the organizer's copy (live, or the tombstone of the organizer's deletion).
    base_is_organizer: bool = False
    organizer_deleted: bool = False
    cancelled: bool = False
    private: bool = False
    time_zone: str = "UTC"
    organizer: common_pb2.Person = field(default_factory=common_pb2.Person)
    attendees: list[common_pb2.Attendee] = field(default_factory=list)
    occurrences: list[OccurrenceCore] = field(default_factory=list)
    #: Live single/master copy per mailbox.
    copies: dict[str, calendar_pb2.CalendarEvent] = field(default_factory=dict)
    #: Live exception/occurrence items per mailbox, by original start.
    exception_copies: dict[str, dict[datetime, calendar_pb2.CalendarEvent]] = field(default_factory=dict)
    #: Mailboxes (not the organizer's) that deleted their copy and hold no other: hidden for them only.
    removed_by: set[str] = field(default_factory=set)
    #: Per mailbox: original starts of occurrences that mailbox deleted from its own copy.
    hidden_occurrences: dict[str, set[datetime]] = field(default_factory=dict)
    mailboxes: set[str] = field(default_factory=set)
    recurring: bool = False

    @property
    def people(self) -> set[str]:
        found = {a.person.email.lower() for a in self.attendees if a.person.email}
        if self.organizer.email:
            found.add(self.organizer.email.lower())
        return found | self.mailboxes


def is_organizer_copy(mailbox: str, event: calendar_pb2.CalendarEvent) -> bool:
    organizer = event.organizer.email.lower()
    return event.my_response == ORGANIZER or (bool(organizer) and organizer == mailbox)


def _rank(item: StoredItem) -> tuple[int, int, str, str]:
    assert item.event is not None
    modified = item.event.last_modified.seconds if item.event.HasField("last_modified") else 0
    return (item.event.appointment_sequence, modified, item.mailbox, item.item_id)


def _zone_of(event: calendar_pb2.CalendarEvent) -> ZoneInfo:
    name = event.time_zone or event.windows_time_zone
    if not name:
        return ZoneInfo("UTC")
    try:
        return resolve_zone(name)
    except UnknownTimeZoneError as exc:
        log.warning("unknown time zone, using UTC", extra={"item_id": event.item_id, "error": str(exc)})
        return ZoneInfo("UTC")


def expand_series(
    event: calendar_pb2.CalendarEvent, zone: ZoneInfo, start: datetime, end: datetime
) -> list[ExpandedOccurrence]:
    """Occurrences of a master in [start, end); a series that cannot be expanded counts as its first one."""
    try:
        return expand_event(event, start, end, zone=zone)
    except RecurrenceError as exc:
        log.error(
            "recurrence cannot be expanded; showing the series' first occurrence only",
            extra={"item_id": event.item_id, "uid": event.uid, "error": str(exc)},
        )
        first_start, first_end = to_datetime(event.start), to_datetime(event.end)
        window = Window(start, end)
        if not window.overlaps(first_start, first_end):
            return []
        return [
            ExpandedOccurrence(
                original_start=first_start,
                start=first_start,
                end=max(first_end, first_start),
                modified=False,
                overrides=None,
                all_day=event.all_day,
            )
        ]


def build_view(meeting: str, uid: str, items: Iterable[StoredItem], window: Window) -> MeetingView:
    view = MeetingView(meeting_id=meeting, uid=uid)
    live_main: list[StoredItem] = []
    organizer_tombstones: list[StoredItem] = []
    exceptions: dict[datetime, list[StoredItem]] = {}
    deleted_main: set[str] = set()
    # The answer each attendee last gave in their own copy (a deleted copy keeps its last answer).
    answers: dict[str, calendar_pb2.CalendarEvent] = {}
    for item in items:
        if item.deleted:
            if item.kind in MAIN_KINDS:
                if item.was_organizer:
                    if item.event is not None:
                        organizer_tombstones.append(item)
                else:
                    deleted_main.add(item.mailbox)
                    if item.event is not None:
                        answers.setdefault(item.mailbox, item.event)
            elif item.recurrence_id is not None:
                view.hidden_occurrences.setdefault(item.mailbox, set()).add(item.recurrence_id)
            continue
        if item.event is None:
            continue
        view.mailboxes.add(item.mailbox)
        if item.kind in MAIN_KINDS:
            live_main.append(item)
            view.copies[item.mailbox] = item.event
        elif item.recurrence_id is not None:
            exceptions.setdefault(item.recurrence_id, []).append(item)
            view.exception_copies.setdefault(item.mailbox, {})[item.recurrence_id] = item.event
    view.removed_by = {m for m in deleted_main if m not in view.copies and m not in view.exception_copies}
    answers.update(view.copies)

    organizer_live = [i for i in live_main if i.event is not None and is_organizer_copy(i.mailbox, i.event)]
    base_item: StoredItem | None = None
    if organizer_live:
        base_item = max(organizer_live, key=_rank)
        view.base_is_organizer = True
    elif organizer_tombstones:
        base_item = max(organizer_tombstones, key=_rank)
        view.base_is_organizer = True
        view.organizer_deleted = True
    elif live_main:
        base_item = max(live_main, key=_rank)
    if base_item is not None and base_item.event is not None:
        base = base_item.event
        view.base = base
        view.base_mailbox = base_item.mailbox
        view.organizer = common_pb2.Person(email=base.organizer.email.lower(), name=base.organizer.name)
        view.private = base.sensitivity == common_pb2.SENSITIVITY_PRIVATE
        view.recurring = base.kind == MASTER
        view.cancelled = (
            view.organizer_deleted
            or base.cancelled
            or (not view.base_is_organizer and any(i.event is not None and i.event.cancelled for i in live_main))
        )
        view.attendees = _merged_attendees(base, answers)
    else:
        view.recurring = bool(exceptions)
        candidates = [max(group, key=_rank) for group in exceptions.values()]
        if candidates:
            first = max(candidates, key=_rank).event
            assert first is not None
            view.organizer = common_pb2.Person(email=first.organizer.email.lower(), name=first.organizer.name)
            view.private = first.sensitivity == common_pb2.SENSITIVITY_PRIVATE
            view.attendees = _merged_attendees(first, answers)
    reference = view.base
    if reference is None and exceptions:
        reference = max((max(g, key=_rank) for g in exceptions.values()), key=_rank).event
    zone = _zone_of(reference) if reference is not None else ZoneInfo("UTC")
    view.time_zone = zone.key
    view.occurrences = _occurrences(view, exceptions, zone, window)
    return view


def _merged_attendees(
    base: calendar_pb2.CalendarEvent, copies: Mapping[str, calendar_pb2.CalendarEvent]
) -> list[common_pb2.Attendee]:
    merged: list[common_pb2.Attendee] = []
    seen: set[str] = set()
    for attendee in base.attendees:
        email = attendee.person.email.lower()
        if email and email in seen:
            continue
        seen.add(email)
        copy = common_pb2.Attendee()
        copy.CopyFrom(attendee)
        copy.person.email = email
        own = copies.get(email)
        if own is not None and own.my_response not in _UNANSWERED and own.my_response != ORGANIZER:
            copy.response = own.my_response
        merged.append(copy)
    return merged


def _pick(group: list[StoredItem]) -> StoredItem:
    organizer = [i for i in group if i.event is not None and is_organizer_copy(i.mailbox, i.event)]
    return max(organizer or group, key=_rank)


def _occurrences(
    view: MeetingView, exceptions: Mapping[datetime, list[StoredItem]], zone: ZoneInfo, window: Window
) -> list[OccurrenceCore]:
    base = view.base
    found: dict[str, OccurrenceCore] = {}
    deleted: set[datetime] = set()
    if base is not None and base.HasField("start") and base.HasField("end"):
        if base.kind == MASTER and base.HasField("recurrence"):
            deleted = {to_datetime(moment) for moment in base.deleted_occurrences}
            for expanded in expand_series(base, zone, window.start, window.end):
                overrides = expanded.overrides
                core = OccurrenceCore(
                    id=occurrence_id(view.meeting_id, expanded.original_start),
                    original_start=expanded.original_start,
                    start=expanded.start,
                    end=expanded.end,
                    subject=(overrides.subject if overrides and overrides.subject else base.subject),
                    body=(overrides.body if overrides and overrides.body else base.body),
                    location=(overrides.location if overrides and overrides.location else base.location),
                    cancelled=bool(overrides and overrides.cancelled),
                    all_day=base.all_day,
                    recurring=True,
                )
                found[core.id] = core
        else:
            start, end = to_datetime(base.start), to_datetime(base.end)
            if window.overlaps(start, end):
                found[view.meeting_id] = OccurrenceCore(
                    id=view.meeting_id,
                    original_start=start,
                    start=start,
                    end=max(start, end),
                    subject=base.subject,
                    body=base.body,
                    location=base.location,
                    cancelled=False,
                    all_day=base.all_day,
                    recurring=False,
                )
    if base is None or base.kind == MASTER:
        for original_start, group in sorted(exceptions.items()):
            if original_start in deleted:
                continue
            event = _pick(group).event
            assert event is not None
            if not (event.HasField("start") and event.HasField("end")):
                continue
            start, end = to_datetime(event.start), to_datetime(event.end)
            key = occurrence_id(view.meeting_id, original_start)
            if not window.overlaps(start, end):
                found.pop(key, None)
                continue
            found[key] = OccurrenceCore(
                id=key,
                original_start=original_start,
                start=start,
                end=max(start, end),
                subject=event.subject or (base.subject if base else ""),
                body=event.body or (base.body if base else ""),
                location=event.location or (base.location if base else ""),
                cancelled=event.cancelled,
                all_day=event.all_day,
                recurring=True,
            )
    return sorted(found.values(), key=lambda c: (c.start, c.original_start, c.id))


# ---------------------------------------------------------------------------------------------------------
# Who sees what
# ---------------------------------------------------------------------------------------------------------


def viewers(view: MeetingView, known_users: set[str] | frozenset[str]) -> dict[str, int]:
    """Every user who sees the meeting, with their own answer (ResponseType)."""
    result: dict[str, int] = {}
    base = view.base
    if base is not None and view.organizer_deleted and not base.is_meeting:
        return result  # a deleted personal appointment is simply gone
    for mailbox, event in sorted(view.copies.items()):
        if is_organizer_copy(mailbox, event):
            result[mailbox] = ORGANIZER
        else:
            result[mailbox] = _answer_of(view, mailbox, event.my_response)
    for mailbox, exceptions in sorted(view.exception_copies.items()):
        if mailbox not in result:
            latest = exceptions[max(exceptions)]
            result[mailbox] = (
                ORGANIZER if is_organizer_copy(mailbox, latest) else _answer_of(view, mailbox, latest.my_response)
            )
    organizer = view.organizer.email
    if organizer and organizer not in result and organizer in known_users and organizer not in view.removed_by:
        result[organizer] = ORGANIZER
    for attendee in view.attendees:
        email = attendee.person.email
        if not email or email in result or email not in known_users or email in view.removed_by:
            continue
        result[email] = _answer_of(view, email, common_pb2.RESPONSE_TYPE_UNSPECIFIED)
    return result


def _answer_of(view: MeetingView, email: str, own: int) -> int:
    if own not in _UNANSWERED:
        return own
    if email == view.organizer.email:
        return ORGANIZER
    for attendee in view.attendees:
        if attendee.person.email == email and attendee.response not in _UNANSWERED:
            return int(attendee.response)
    return common_pb2.RESPONSE_TYPE_NO_RESPONSE_RECEIVED


def occurrence_message(
    view: MeetingView, core: OccurrenceCore, my_response: int, conference: common_pb2.ConferenceLink | None
) -> calendar_pb2.Occurrence:
    """The Occurrence a viewer is shown (updated_at is left unset: it is stamped when pushed)."""
    occurrence = calendar_pb2.Occurrence(
        id=core.id,
        meeting_id=view.meeting_id,
        uid=view.uid,
        all_day=core.all_day,
        time_zone=view.time_zone,
        cancelled=view.cancelled or core.cancelled,
        private=view.private,
        my_response=common_pb2.ResponseType.ValueType(my_response),
        recurring=core.recurring,
    )
    occurrence.organizer.CopyFrom(view.organizer)
    set_timestamp(occurrence.start, core.start)
    set_timestamp(occurrence.end, core.end)
    set_timestamp(occurrence.original_start, core.original_start)
    if not view.private:
        occurrence.subject = core.subject
        occurrence.body = core.body
        occurrence.location = core.location
        occurrence.attendees.extend(view.attendees)
    if conference is not None and conference.id:
        occurrence.conference.CopyFrom(conference)
    return occurrence


class OccurrenceMessages:
    """The Occurrences of one view and conference link, each (occurrence, answer) built once and then shared:
    whoever uses one must not modify it (the outbox copies what it sends)."""

    def __init__(self, view: MeetingView, conference: common_pb2.ConferenceLink | None) -> None:
        self.view = view
        self.conference = conference
        self._built: dict[tuple[str, int], calendar_pb2.Occurrence] = {}
        self._any: dict[str, calendar_pb2.Occurrence] = {}

    def get(self, core: OccurrenceCore, my_response: int) -> calendar_pb2.Occurrence:
        key = (core.id, my_response)
        found = self._built.get(key)
        if found is not None:
            return found
        other = self._any.get(core.id)
        if other is None:
            found = occurrence_message(self.view, core, my_response, self.conference)
            self._any[core.id] = found
        else:  # the same occurrence with another answer: a copy is cheaper than building it again
            found = calendar_pb2.Occurrence()
            found.CopyFrom(other)
            found.my_response = common_pb2.ResponseType.ValueType(my_response)
        self._built[key] = found
        return found


def shown_occurrences(
    view: MeetingView,
    known_users: set[str] | frozenset[str],
    conference: common_pb2.ConferenceLink | None,
    messages: OccurrenceMessages | None = None,
) -> dict[tuple[str, str], calendar_pb2.Occurrence]:
    """(user, occurrence id) -> the Occurrence that user's TrueConf apps should show (shared messages: read only)."""
    built = messages if messages is not None else OccurrenceMessages(view, conference)
    desired: dict[tuple[str, str], calendar_pb2.Occurrence] = {}
    for user, answer in viewers(view, known_users).items():
        hidden = view.hidden_occurrences.get(user, set())
        own = view.copies.get(user)
        if own is not None and view.base is not None and own is not view.base:
            base_deleted = {to_datetime(m) for m in view.base.deleted_occurrences}
            hidden = hidden | ({to_datetime(m) for m in own.deleted_occurrences} - base_deleted)
        for core in view.occurrences:
            if core.recurring and core.original_start in hidden:
                continue
            desired[(user, core.id)] = built.get(core, answer)
    return desired


# ---------------------------------------------------------------------------------------------------------
# The conference a meeting should have
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Untouched:
    """Nothing is known that should change the conference (the organizer's copy is not known)."""


@dataclass(frozen=True)
class Absent:
    """The meeting should have no conference (none asked for, or cancelled/deleted)."""


@dataclass(frozen=True)
class LinkedConference:
    """The meeting links an existing conference by its join link: used, never created or deleted."""

    server_id: str
    conference_id: str
    url: str
    invitations: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class OwnedConference:
    """The conference the connector creates and keeps up to date for the meeting."""

    server_id: str
    topic: str
    owner: str
    spec: common_pb2.ConferenceSpec
    schedule_start: datetime
    duration: timedelta
    #: IANA zone the meeting is shown in (TrueConf's schedule.special_time_offset is taken from it).
    time_zone: str
    invitations: tuple[tuple[str, str], ...]
    #: Series: the end of the occurrence the schedule points at (re-point once it has passed).
    repoint_at: datetime | None


DesiredConference = Untouched | Absent | LinkedConference | OwnedConference


def invitees(view: MeetingView) -> tuple[tuple[str, str], ...]:
    """(email, display name) of the attendees who have not declined, without the organizer and rooms."""
    found: list[tuple[str, str]] = []
    seen: set[str] = {view.organizer.email}
    for attendee in view.attendees:
        email = attendee.person.email
        if not email or email in seen:
            continue
        if attendee.role == common_pb2.ATTENDEE_ROLE_RESOURCE:
            continue
        if attendee.response == common_pb2.RESPONSE_TYPE_DECLINE:
            continue
        seen.add(email)
        found.append((email, attendee.person.name))
    return tuple(found)


def desired_conference(view: MeetingView, settings: EngineSettings, now: datetime) -> DesiredConference:
    base = view.base
    if base is None:
        return Untouched()
    if view.cancelled:
        return Absent()
    if not base.HasField("conference"):
        # Only the organizer's copy can say "no conference": an attendee's copy may simply lack the marker.
        return Absent() if view.base_is_organizer else Untouched()
    spec = base.conference
    if spec.source == common_pb2.CONFERENCE_SOURCE_JOIN_LINK and spec.existing_conference_id:
        host = spec.join_link_host.lower()
        return LinkedConference(
            server_id=settings.conference_server(host),
            conference_id=spec.existing_conference_id,
            url=f"https://{host}/c/{spec.existing_conference_id}" if host else "",
            invitations=invitees(view),
        )
    if not view.base_is_organizer:
        return Untouched()
    start, end, repoint = _schedule_occurrence(view, now)
    return OwnedConference(
        server_id=settings.conference_server(spec.join_link_host),
        topic=base.subject,
        owner=view.organizer.email,
        spec=settings.with_defaults(spec),
        schedule_start=start,
        duration=max(end - start, timedelta(0)),
        time_zone=view.time_zone,
        invitations=invitees(view),
        repoint_at=repoint,
    )


def _schedule_occurrence(view: MeetingView, now: datetime) -> tuple[datetime, datetime, datetime | None]:
    """(start, end, re-point time) of the occurrence a conference schedule should point at."""
    base = view.base
    assert base is not None
    if not view.recurring:
        return to_datetime(base.start), to_datetime(base.end), None
    live = [c for c in view.occurrences if not c.cancelled]
    upcoming = [c for c in live if c.end > now]
    if upcoming:
        chosen = min(upcoming, key=lambda c: (c.start, c.original_start))
        return chosen.start, chosen.end, chosen.end
    latest_end = max((c.end for c in view.occurrences), default=now)
    horizon_start = max(latest_end, now)
    zone = ZoneInfo(view.time_zone)
    for expanded in expand_series(base, zone, horizon_start, horizon_start + NEXT_OCCURRENCE_HORIZON):
        if expanded.end > now and not (expanded.overrides and expanded.overrides.cancelled):
            return expanded.start, expanded.end, expanded.end
    if live:
        last = max(live, key=lambda c: (c.start, c.original_start))
        return last.start, last.end, None
    return to_datetime(base.start), to_datetime(base.end), None


def conference_upsert(
    meeting: str, desired: OwnedConference, conference_id: str, settings: EngineSettings
) -> commands_pb2.ConferenceUpsert:
    """The ConferenceUpsert for `desired` (create when conference_id is empty)."""
    upsert = commands_pb2.ConferenceUpsert(
        meeting_id=meeting,
        conference_id=conference_id,
        topic=desired.topic,
        owner=desired.owner,
    )
    upsert.spec.CopyFrom(desired.spec)
    upsert.schedule.type = commands_pb2.SCHEDULE_TYPE_ONCE
    set_timestamp(upsert.schedule.start, desired.schedule_start)
    upsert.schedule.duration_seconds = int(desired.duration.total_seconds())
    upsert.schedule.time_zone = desired.time_zone
    if settings.sync_conference_participants and not settings.temporal_conf_participants_mode:
        upsert.sync_invitations = True
        upsert.invitations.extend(invitee_messages(desired.invitations))
    return upsert


def invitee_messages(invitations: Iterable[tuple[str, str]]) -> list[commands_pb2.Invitee]:
    return [commands_pb2.Invitee(email=email, display_name=name) for email, name in invitations]


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
