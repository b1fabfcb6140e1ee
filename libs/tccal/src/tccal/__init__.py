"""Shared library of the TrueConf Calendar Connector (config, secrets, bus, gRPC kit, telemetry, CLI)."""
