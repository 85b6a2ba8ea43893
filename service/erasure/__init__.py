"""Erasure that survives restores and residue: the destruction ledger, key-encryption epochs, backups.

See docs/erasure.md for the guarantee and its limits.
"""
