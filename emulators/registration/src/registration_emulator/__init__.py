"""Registration authority emulator for the TrueConf Calendar Connector."""
