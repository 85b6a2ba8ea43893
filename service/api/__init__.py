"""HTTP: one router module per resource, problem+json errors, authentication."""
