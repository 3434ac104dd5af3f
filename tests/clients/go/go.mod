module agentwatch/goclient

go 1.19
