"""The Gateway WebSocket protocol: server and the client the CLI uses."""
