"""The bridge: a JWT-protected HTTP API in front of the engine (see bridge/README.md)."""
