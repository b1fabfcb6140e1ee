"""Exchange access: credentials and endpoints, one bounded pool per credential, error classes."""
