"""ews-ingest: reads Exchange calendars over EWS and publishes every change to JetStream."""
