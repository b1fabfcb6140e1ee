"""graph-ingest: Exchange Online calendars through Microsoft Graph, published as CalendarChanges."""
