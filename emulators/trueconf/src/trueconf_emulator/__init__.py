"""TrueConf Server emulator for the calendar connector: calendar-bridge client (docs/bridge-protocol.md),
REST API v4, inspection and fault injection. Run with `python -m trueconf_emulator`."""

__version__ = "0.1.0"
