"""Consent records, their enforcement, and withdrawal by crypto-shredding."""
