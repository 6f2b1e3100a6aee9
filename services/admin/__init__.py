"""The operator console: server-rendered pages on the API's admin port (DESIGN §14)."""
