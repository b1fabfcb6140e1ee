"""Microsoft Graph emulator (Exchange Online calendars) for the TrueConf Calendar Connector."""
