"""What `config check` finds beyond the schema: a file every service would accept that still cannot work.

* problems - a service would refuse to start with this file (a gRPC address beyond loopback without
  `grpc.adminToken`, the rule of tccal.grpckit.GrpcServer; `grpc.tls` or `dbConnectionConfig.ssl*` files that
  cannot be read or do not go together), or the connector could not do its work: no TrueConf Server can connect
  (none is both whitelisted and in `tcs.servers` with a bridge secret; tcs-gateway's bridge refuses a server
  without a secret);
* problems too - a Graph provider's clientCertificate that cannot be read or is no RSA X.509 certificate
  (graph-ingest would refuse to start);
* warnings - everything starts, but some TrueConf Server cannot use it (an entry on one side only), or secrets
  and calendars would cross the network in clear (EWS over http, PostgreSQL beyond loopback with sslMode disable),
  or a mailbox is listed under both an EWS and a Graph provider, or a mail domain under two Graph providers.
"""

from __future__ import annotations

import os

from tccal.config.loader import ConfigProblem
from tccal.config.schema import OPTIONAL_SERVICE_NAMES, SERVICE_NAMES, Config
from tccal.db_tls import effective_ssl_mode, is_local, ssl_context
from tccal.graph_certificate import CertificateError, read_certificate
from tccal.grpckit import TlsMaterial, is_loopback


def startup_problems(config: Config) -> list[ConfigProblem]:
    """Problems that stop a service at start although the file is valid."""
    problems: list[ConfigProblem] = notification_problems(config)
    try:
        TlsMaterial.from_config(config.grpc.tls)
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        problems.append(ConfigProblem(key, message))
    try:
        ssl_context(config.db_connection_config)
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        problems.append(ConfigProblem(key, message))
    if config.grpc.admin_token:
        return problems
    services = [*SERVICE_NAMES, *(OPTIONAL_SERVICE_NAMES if config.graph_providers else ())]
    for service in services:
        host = config.grpc.endpoint(service).host
        if not is_loopback(host):
            problems.append(
                ConfigProblem(
                    f"grpc.services.{service}.host",
                    f"{host!r} is beyond loopback, so grpc.adminToken must be set (the service refuses to start "
                    "without it: its calls would be open to the network)",
                )
            )
    return problems


def trueconf_problems(config: Config) -> list[ConfigProblem]:
    """Why no TrueConf Server can connect at all, or a configured one never could (an empty bridge secret)."""
    problems = [
        ConfigProblem(
            f"tcs.servers[{index}].secret",
            f"is empty: the bridge refuses {server.id!r} whatever it presents (set the secret TrueConf Server's "
            "calendar integration uses, encrypted with tc-calendar --hash_pass)",
        )
        for index, server in enumerate(config.tcs.servers)
        if not server.secret
    ]
    whitelisted = {server.lower() for server in config.product_whitelist.tcs}
    connectable = [s for s in config.tcs.servers if s.secret and s.id.lower() in whitelisted]
    if not connectable:
        if not config.tcs.servers:
            why = "tcs.servers is empty (each server needs its id, bridge secret and REST API v4 client there)"
        elif not whitelisted:
            why = "productWhitelist.tcs is empty (list the id of each TrueConf Server there)"
        else:
            why = "none is both in productWhitelist.tcs and in tcs.servers with a bridge secret"
        problems.append(ConfigProblem("tcs.servers", f"no TrueConf Server can connect: {why}"))
    return problems


def trueconf_warnings(config: Config) -> list[ConfigProblem]:
    """Which TrueConf Server cannot connect although another one can: an entry on one side only (whitelisted
    without a tcs.servers entry, or the reverse)."""
    whitelist = config.product_whitelist.tcs
    ids = [server.id for server in config.tcs.servers]
    one_sided = (
        (
            whitelist,
            ids,
            "productWhitelist.tcs[{}]",
            "has no tcs.servers entry (bridge secret, REST API client): that TrueConf Server cannot connect",
        ),
        (ids, whitelist, "tcs.servers[{}].id", "is not in productWhitelist.tcs: its connections are refused"),
    )
    warnings: list[ConfigProblem] = []
    for entries, other_side, key, why in one_sided:
        elsewhere = {entry.lower() for entry in other_side}
        last = {entry.lower(): index for index, entry in enumerate(entries)}  # an id listed twice: its last entry
        warnings += [
            ConfigProblem(key.format(index), f"{entries[index]!r} {why}")
            for server, index in last.items()
            if server not in elsewhere
        ]
    return warnings


def transport_warnings(config: Config) -> list[ConfigProblem]:
    """What would cross the network unencrypted: EWS over http (with Basic authentication, the service account's
    password itself on every request - RFC 7617 §4: "the user's password ... is transmitted in clear"), and
    PostgreSQL beyond loopback without TLS."""
    warnings: list[ConfigProblem] = []
    for index, provider in config.ews_providers:
        if provider.scheme != "http" or provider.host == "localhost" or is_loopback(provider.host):
            continue  # https, or a loopback address: nothing crosses the network
        if provider.auth == "basic":
            message = (
                f"Basic authentication over http to {provider.host!r}: every EWS request carries the impersonation "
                "account's password in clear (base64); use scheme https"
            )
        else:
            message = (
                f"EWS over http to {provider.host!r}: calendars and the NTLM exchange (open to offline cracking) "
                "cross the network unencrypted; use scheme https"
            )
        warnings.append(ConfigProblem(f"calendarProviders[{index}].scheme", message))
    db = config.db_connection_config
    if effective_ssl_mode(db) == "disable" and not is_local(db.host):
        warnings.append(
            ConfigProblem(
                "dbConnectionConfig.sslMode",
                f"'disable' for PostgreSQL at {db.host!r}, beyond loopback: its password and every calendar cross "
                "the network unencrypted; use verify-full (the default) with sslRootCert",
            )
        )
    return warnings


def provider_warnings(config: Config) -> list[ConfigProblem]:
    """A mailbox listed under an EWS and a Graph provider would be read by both ews-ingest and graph-ingest: two
    copies of every meeting, under two provider names (hybrid: on-premises mailboxes through EWS, cloud ones through
    Graph - each mailbox in one place). A mail domain claimed by two Graph providers: the first one serves its
    on-demand mailboxes (tccal.config.schema.MailboxRouting)."""
    ews = {user: index for index, provider in config.ews_providers for user in provider.users}
    warnings: list[ConfigProblem] = []
    for index, provider in config.graph_providers:
        for number, user in enumerate(provider.users):
            if user in ews:
                warnings.append(
                    ConfigProblem(
                        f"calendarProviders[{index}].users[{number}]",
                        f"{user!r} is also listed by the EWS provider calendarProviders[{ews[user]}]: both "
                        "ews-ingest and graph-ingest would sync it; list each mailbox under one provider",
                    )
                )
    claimed: dict[str, int] = {}
    for index, provider in config.graph_providers:
        for number, domain in enumerate(provider.domains):
            if domain in claimed and claimed[domain] != index:
                warnings.append(
                    ConfigProblem(
                        f"calendarProviders[{index}].domains[{number}]",
                        f"{domain!r} is also claimed by the Graph provider calendarProviders[{claimed[domain]}], "
                        "which serves its on-demand mailboxes; give each domain to one tenant",
                    )
                )
            claimed.setdefault(domain, index)
    return warnings


def notification_problems(config: Config) -> list[ConfigProblem]:
    """What stops graph-ingest's change-notification receiver: certFile without keyFile (or the reverse), files it
    cannot read, two Graph providers on one listen address, or notificationListen set without a notificationUrl."""
    problems: list[ConfigProblem] = []
    listening: dict[tuple[str, int], int] = {}
    for index, provider in config.graph_providers:
        key = f"calendarProviders[{index}].notificationListen"
        listen = provider.notification_listen
        if provider.notification_url is None:
            if "notification_listen" in provider.model_fields_set:
                problems.append(
                    ConfigProblem(
                        key,
                        "is set but notificationUrl is not: Graph posts only to a notificationUrl (the public "
                        "https:// URL that reaches this address); set it, or drop notificationListen to poll only",
                    )
                )
            continue
        if (listen.cert_file is None) != (listen.key_file is None):
            given, missing = ("certFile", "keyFile") if listen.key_file is None else ("keyFile", "certFile")
            problems.append(ConfigProblem(f"{key}.{missing}", f"is missing: {given} is set, HTTPS needs both"))
        for name, path in (("certFile", listen.cert_file), ("keyFile", listen.key_file)):
            if path is not None and not os.access(path, os.R_OK):
                problems.append(ConfigProblem(f"{key}.{name}", f"{path!r} cannot be read"))
        other = listening.setdefault((listen.host, listen.port), index)
        if other != index:
            problems.append(
                ConfigProblem(
                    f"{key}.port",
                    f"{listen.host}:{listen.port} is already the receiver of calendarProviders[{other}]: give each "
                    "Graph provider its own port",
                )
            )
    return problems


def graph_credential_problems(config: Config) -> list[ConfigProblem]:
    """A Graph provider's certificate that graph-ingest could not read (the private key is checked against it when
    graph-ingest decrypts it at start)."""
    problems: list[ConfigProblem] = []
    for index, provider in config.graph_providers:
        if provider.client_certificate is None:
            continue
        try:
            read_certificate(provider.client_certificate.certificate)
        except CertificateError as exc:
            problems.append(ConfigProblem(f"calendarProviders[{index}].clientCertificate.certificate", str(exc)))
    return problems
