"""MAPI properties every appointment has on Exchange, served when asked for as extended properties: clients that
never set them (Outlook's sync, CalDAV gateways, ews-ingest's own dedup) read them to identify a meeting.

- PidLidGlobalObjectId (PSETID_Meeting 0x0003, Binary) and PidLidCleanGlobalObjectId (0x0023): [MS-OXOCAL]
  2.2.1.27 / 2.2.1.28 - the UID's bytes when it is Outlook's hex form, otherwise the "vCal-Uid" wrapping of the
  iCalendar UID; the instance date of an occurrence in bytes 16-19 of the first, zero in the clean one.
- PidLidRecurring (PSETID_Appointment 0x8223, Boolean): [MS-OXOCAL] 2.2.1.12.
- PR_CREATION_TIME (0x3007) and PR_LAST_MODIFICATION_TIME (0x3008), SystemTime: [MS-OXCMSG] 2.2.1.2 /
  [MS-OXPROPS].
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import struct

from .model import CalendarItem, ExtKey, ExtValue
from .xmlutil import fmt_dt

PSETID_MEETING = "6ed8da90-450b-101b-98da-00aa003f1305"
PSETID_APPOINTMENT = "00062002-0000-0000-c000-000000000046"
#: The fixed first 16 bytes of every GlobalObjectId ([MS-OXOCAL] 2.2.1.27, "Byte Array ID").
GOID_PREFIX = binascii.unhexlify("040000008200E00074C5B7101A82E008")


def global_object_id(uid: str, instance: dt.date | None = None) -> bytes:
    try:
        raw = binascii.unhexlify(uid)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(GOID_PREFIX) or len(raw) < 40:
        data = b"vCal-Uid" + struct.pack("<I", 1) + uid.encode("utf-8") + b"\x00"
        raw = GOID_PREFIX + bytes(4) + bytes(8) + bytes(8) + struct.pack("<I", len(data)) + data
    date = struct.pack(">HBB", instance.year, instance.month, instance.day) if instance else bytes(4)
    return raw[:16] + date + raw[20:]


def computed(key: ExtKey, item: CalendarItem) -> ExtValue | None:
    """The value of a MAPI property Exchange keeps on every appointment, or None for any other key."""
    top = item.master if item.master is not None else item
    instance = item.original_start.date() if item.master is not None and item.original_start else None
    value: str | None = None
    if key.set_id == PSETID_MEETING and key.prop_type == "Binary" and key.name in ("#3", "#35"):
        goid = global_object_id(top.uid, instance if key.name == "#3" else None)
        value = base64.b64encode(goid).decode("ascii")
    elif key.set_id == PSETID_APPOINTMENT and key.name == f"#{0x8223}" and key.prop_type == "Boolean":
        value = "true" if top.recurrence is not None else "false"
    elif key.set_id == "" and key.prop_type == "SystemTime" and key.name in (f"tag:{0x3007}", f"tag:{0x3008}"):
        value = fmt_dt(item.created if key.name == f"tag:{0x3007}" else item.modified)
    if value is None:
        return None
    return ExtValue({}, [value], False)
