"""Tenants and API clients: one place creates a client, for the API, the CLI and the first start."""
