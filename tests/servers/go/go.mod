module agentwatch/tests/servers/go

go 1.19
