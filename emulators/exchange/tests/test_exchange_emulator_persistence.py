"""`--state-file`: a restarted emulator finds the mailboxes it left; sync states stay valid, subscriptions end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from exchange_emulator_support import SERVICE_PASSWORD, SERVICE_USER
from exchangelib import IMPERSONATION, NTLM, UTC, Account, CalendarItem, Configuration, Credentials, EWSDateTime
from exchangelib.errors import ErrorSubscriptionNotFound
from exchangelib.protocol import close_connections

from exchange_emulator.testing import DEFAULT_CONFIG, EmulatorHandle, running_emulator


def _account(emu: EmulatorHandle, email: str) -> Account:
    config = Configuration(
        service_endpoint=emu.ews_url, credentials=Credentials(SERVICE_USER, SERVICE_PASSWORD), auth_type=NTLM
    )
    return Account(email, config=config, access_type=IMPERSONATION, autodiscover=False)


def test_a_restart_keeps_mailboxes_items_and_sync_states(tmp_path: Path) -> None:
    state_file = tmp_path / "exchange-state.pickle"
    args = ["--state-file", str(state_file)]
    start = EWSDateTime(2034, 3, 1, 9, tzinfo=UTC)
    with running_emulator(DEFAULT_CONFIG, extra_args=args) as emu:
        owner = emu.admin.add_mailbox("keeper@example.com")["email"]
        acc = _account(emu, owner)
        CalendarItem(
            account=acc, folder=acc.calendar, subject="kept", start=start, end=start + dt.timedelta(hours=1)
        ).save()
        list(acc.calendar.sync_items())
        state = acc.calendar.item_sync_state
        subscription = acc.calendar.subscribe_to_streaming()
        acc.protocol.close()
    close_connections()
    assert state_file.exists()
    with running_emulator(DEFAULT_CONFIG, extra_args=args) as emu:
        acc = _account(emu, owner)
        assert [i.subject for i in acc.calendar.all()] == ["kept"]
        assert list(acc.calendar.sync_items(sync_state=state)) == []  # the state from before the restart is valid
        CalendarItem(
            account=acc, folder=acc.calendar, subject="after", start=start, end=start + dt.timedelta(hours=1)
        ).save()
        assert [(k, i.subject) for k, i in acc.calendar.sync_items(sync_state=state)] == [("create", "after")]
        with pytest.raises(ErrorSubscriptionNotFound):  # notification state does not survive a restart
            list(acc.calendar.get_streaming_events([subscription], connection_timeout=1))
        acc.protocol.close()
    close_connections()


def test_a_damaged_state_file_is_named_not_ignored(tmp_path: Path) -> None:
    state_file = tmp_path / "exchange-state.pickle"
    state_file.write_bytes(b"not a pickle")
    from exchange_emulator.testing import EmulatorError

    with (
        pytest.raises(EmulatorError, match="cannot be read"),
        running_emulator(DEFAULT_CONFIG, extra_args=["--state-file", str(state_file)]),
    ):
        pass


def test_a_restart_keeps_created_folders_their_items_and_user_configurations(tmp_path: Path) -> None:
    from exchangelib.folders import Calendar, SingleFolderQuerySet

    args = ["--state-file", str(tmp_path / "exchange-state.pickle")]
    start = EWSDateTime(2034, 3, 1, 9, tzinfo=UTC)
    with running_emulator(DEFAULT_CONFIG, extra_args=args) as emu:
        owner = emu.admin.add_mailbox("folders@example.com")["email"]
        acc = _account(emu, owner)
        team = Calendar(parent=acc.calendar, name="Team").save()
        team_id = team.id
        CalendarItem(account=acc, folder=team, subject="team", start=start, end=start + dt.timedelta(hours=1)).save()
        list(team.sync_items())
        team_state = team.item_sync_state
        team.create_user_configuration(name="View", dictionary={"mode": "week"}, xml_data=b"<v/>")
        acc.calendar.update_user_configuration(name="WorkHours", xml_data=b"<WorkHours/>")
        acc.protocol.close()
    close_connections()
    with running_emulator(DEFAULT_CONFIG, extra_args=args) as emu:
        acc = _account(emu, owner)
        acc.root.clear_cache()
        kept = acc.calendar / "Team"
        assert kept.id == team_id
        assert [i.subject for i in kept.all()] == ["team"]
        assert [i.subject for i in acc.calendar.all()] == []
        assert list(kept.sync_items(sync_state=team_state)) == []  # its SyncState is still valid
        config = kept.get_user_configuration(name="View")
        assert (config.dictionary, config.xml_data) == ({"mode": "week"}, b"<v/>")
        assert acc.calendar.get_user_configuration(name="WorkHours").xml_data == b"<WorkHours/>"
        kept.delete()
        again = Calendar(parent=acc.calendar, name="Team").save()
        assert again.id != team_id  # a folder id is never given twice, restart or not
        assert isinstance(
            SingleFolderQuerySet(account=acc, folder=Calendar(root=acc.root, id=team_id)).resolve(), Exception
        )
        acc.protocol.close()
    close_connections()


def test_a_state_file_from_before_created_folders_still_loads() -> None:
    """A Mailbox pickled before `folders`, `last_folder_no`, `configurations` and `hierarchy` existed gets their
    defaults."""
    import pickle

    from exchange_emulator.model import Mailbox

    state = Mailbox(no=1, email="old@example.com", display_name="Old").__getstate__()
    for name in ("folders", "last_folder_no", "configurations", "hierarchy"):
        del state[name]
    old = Mailbox.__new__(Mailbox)
    old.__setstate__(state)
    loaded = pickle.loads(pickle.dumps(old))
    assert (loaded.folders, loaded.last_folder_no, loaded.configurations, loaded.hierarchy) == ({}, 0, None, [])
    assert loaded.email == "old@example.com" and loaded.child_folders("calendar") == []
