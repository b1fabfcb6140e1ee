"""TrueConf Server REST API v4: tokens, requests, users, conferences."""
