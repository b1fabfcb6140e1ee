"""The calendar bridge WebSocket (docs/bridge-protocol.md): server, sessions, frames, events, queue."""
