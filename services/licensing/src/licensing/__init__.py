"""TrueConf Calendar Connector licensing service."""
