"""tcs-gateway: the calendar bridge WebSocket to TrueConf Server and its REST API v4."""
