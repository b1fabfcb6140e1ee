"""The sync-engine's view of config.json: cache window, conference options, TrueConf Servers, synced users."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from tccal.config import Config
from tccal.config.schema import ConferenceDefaults
from trueconf.calendar.v1 import common_pb2

_MODES = {
    "S|L Auto": common_pb2.CONFERENCE_MODE_SMART_MEETING,
    "S|L": common_pb2.CONFERENCE_MODE_MODERATED,
    "PxP": common_pb2.CONFERENCE_MODE_ALL_ON_SCREEN,
    "OxP": common_pb2.CONFERENCE_MODE_VIDEO_LECTURE,
}
#: Connections the engine's concurrent tasks need at the same time.
MIN_POOL = 4
_ACCESS = {"private": common_pb2.CONFERENCE_ACCESS_PRIVATE, "public": common_pb2.CONFERENCE_ACCESS_PUBLIC}


@dataclass(frozen=True)
class TcsTarget:
    """One TrueConf Server commands can go to: its id and the host names that identify it in join links."""

    server_id: str
    hosts: frozenset[str]


@dataclass(frozen=True)
class EngineSettings:
    servers: tuple[TcsTarget, ...]
    configured_users: frozenset[str]
    backward_months: int = 2
    forward_months: int = 3
    launch_conference: bool = True
    sync_conference_participants: bool = True
    temporal_conf_participants_mode: bool = False
    conference_defaults: ConferenceDefaults = field(default_factory=ConferenceDefaults)
    # Retries of RETRYABLE failures before a command is marked failed for good.
    max_attempts: int = 10
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 300.0

    @classmethod
    def from_config(cls, config: Config) -> EngineSettings:
        servers: list[TcsTarget] = []
        if config.tcs.servers:
            for server in config.tcs.servers:
                hosts = {_server_name(server.id)}
                rest_host = urlparse(server.rest_url).hostname
                if rest_host:
                    hosts.add(rest_host.lower())
                servers.append(TcsTarget(server.id, frozenset(hosts)))
        else:
            servers = [TcsTarget(sid, frozenset({_server_name(sid)})) for sid in config.product_whitelist.tcs]
        if not servers:
            raise ValueError(
                "sync-engine has no TrueConf Server to send commands to: tcs.servers and productWhitelist.tcs "
                "are both empty (expected at least one server id such as 'video.example.com#vcs')"
            )
        if config.db_connection_config.pool_max < MIN_POOL:
            raise ValueError(
                f"dbConnectionConfig.poolMax is {config.db_connection_config.pool_max}; sync-engine needs at least "
                f"{MIN_POOL} connections (consumers, relay, scheduler and window roll run side by side)"
            )
        users = frozenset(user.lower() for provider in config.calendar_providers for user in provider.users)
        return cls(
            servers=tuple(servers),
            configured_users=users,
            backward_months=config.cache.backward,
            forward_months=config.cache.forward,
            launch_conference=config.launch_conference,
            sync_conference_participants=config.sync_conference_participants,
            temporal_conf_participants_mode=config.temporal_conf_participants_mode,
            conference_defaults=config.conference_defaults,
        )

    @property
    def calendar_servers(self) -> tuple[str, ...]:
        """Calendar commands go to every server: the gateway forwards them to whichever has the user."""
        return tuple(server.server_id for server in self.servers)

    def conference_server(self, join_link_host: str) -> str:
        """The server whose host matches a join link's host, else the first server."""
        host = join_link_host.strip().lower()
        if host:
            for server in self.servers:
                if host in server.hosts:
                    return server.server_id
        return self.servers[0].server_id

    def with_defaults(self, spec: common_pb2.ConferenceSpec) -> common_pb2.ConferenceSpec:
        """`spec` with conferenceDefaults filled in where it leaves a choice open (mode, access; and for
        @trueconf keyword meetings every setting, which the keyword cannot express)."""
        result = common_pb2.ConferenceSpec()
        result.CopyFrom(spec)
        defaults = self.conference_defaults
        if result.mode == common_pb2.CONFERENCE_MODE_UNSPECIFIED:
            result.mode = _MODES[defaults.mode]
        if result.access == common_pb2.CONFERENCE_ACCESS_UNSPECIFIED:
            result.access = _ACCESS[defaults.access]
        if result.source == common_pb2.CONFERENCE_SOURCE_KEYWORD:
            result.max_participants = result.max_participants or defaults.max_participants
            result.max_podiums = result.max_podiums or defaults.max_podiums
            result.waiting_room_enabled = result.waiting_room_enabled or defaults.waiting_room_enabled
            result.recording_enabled = result.recording_enabled or defaults.recording_enabled
            result.mute_mic_on_join = result.mute_mic_on_join or defaults.mute_mic_on_join
            result.mute_camera_on_join = result.mute_camera_on_join or defaults.mute_camera_on_join
        return result


def _server_name(server_id: str) -> str:
    return server_id.split("#", 1)[0].lower()
