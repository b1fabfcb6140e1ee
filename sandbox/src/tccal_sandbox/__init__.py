"""The TrueConf Calendar Connector sandbox: the whole product on one machine and the tests' common ground."""
