"""Refusals of the licensing domain.

Each refusal has a stable ``code`` (also sent over gRPC as the message prefix ``[code]``), a CLI exit code and
a gRPC status. The table is documented in services/licensing/README.md; never renumber.
"""

from __future__ import annotations

from typing import ClassVar

# The guide's words (§2.4.2), printed verbatim.
FREE_OFFLINE_MESSAGE = (
    "A free license cannot be registered offline. This form of registration is available only for paid licenses."
)


class LicensingError(Exception):
    """Base class: a refusal with a clear reason."""

    code: ClassVar[str] = "licensing_error"
    exit_code: ClassVar[int] = 1
    grpc_status: ClassVar[str] = "INTERNAL"  # name of a grpc.StatusCode

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def grpc_message(self) -> str:
        return f"[{self.code}] {self.message}"


class RegistrationUnreachableError(LicensingError):
    """The registration server could not be reached (connection, TLS, timeout, 5xx)."""

    code = "registration_server_unreachable"
    exit_code = 3
    grpc_status = "UNAVAILABLE"


class NotConfiguredError(LicensingError):
    """No longer raised: the authority key is built in (``licensing.authority``). Kept so the code stays taken."""

    code = "not_configured"
    exit_code = 2
    grpc_status = "FAILED_PRECONDITION"


class StorageError(LicensingError):
    code = "storage_error"
    exit_code = 4
    grpc_status = "UNAVAILABLE"


class MalformedKeyError(LicensingError):
    code = "malformed_key"
    exit_code = 10
    grpc_status = "INVALID_ARGUMENT"


class UnknownKeyError(LicensingError):
    code = "unknown_key"
    exit_code = 11
    grpc_status = "NOT_FOUND"


class KeyInUseError(LicensingError):
    code = "key_in_use"
    exit_code = 12
    grpc_status = "FAILED_PRECONDITION"


class KeyRevokedError(LicensingError):
    code = "key_revoked"
    exit_code = 13
    grpc_status = "PERMISSION_DENIED"


class FreeOfflineError(LicensingError):
    code = "free_offline_refused"
    exit_code = 14
    grpc_status = "FAILED_PRECONDITION"


class TamperedLicenseError(LicensingError):
    """Signature missing or wrong, or signed by an authority this installation does not trust."""

    code = "tampered_license"
    exit_code = 15
    grpc_status = "INVALID_ARGUMENT"


class ForeignInstallationError(LicensingError):
    code = "foreign_installation"
    exit_code = 16
    grpc_status = "FAILED_PRECONDITION"


class LicenseExpiredError(LicensingError):
    code = "license_expired"
    exit_code = 17
    grpc_status = "FAILED_PRECONDITION"


class InvalidRegistrationFileError(LicensingError):
    """Not a registration file we understand (not base64/JSON, wrong format or version, a request file)."""

    code = "invalid_registration_file"
    exit_code = 18
    grpc_status = "INVALID_ARGUMENT"


class RegistrationProtocolError(LicensingError):
    """The registration server answered something that is not a valid answer."""

    code = "registration_protocol_error"
    exit_code = 19
    grpc_status = "UNKNOWN"


ALL_ERRORS: tuple[type[LicensingError], ...] = (
    RegistrationUnreachableError,
    NotConfiguredError,
    StorageError,
    MalformedKeyError,
    UnknownKeyError,
    KeyInUseError,
    KeyRevokedError,
    FreeOfflineError,
    TamperedLicenseError,
    ForeignInstallationError,
    LicenseExpiredError,
    InvalidRegistrationFileError,
    RegistrationProtocolError,
)
ERRORS_BY_CODE: dict[str, type[LicensingError]] = {cls.code: cls for cls in ALL_ERRORS}
