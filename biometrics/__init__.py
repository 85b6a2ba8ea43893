"""Voice (and, later, fingerprint) biometrics as a library: no web, no database.

Bytes become a typed sample (`biometrics.audio`), the quality gates measure it
(`biometrics.quality`), the verified ECAPA-TDNN model turns its speech into an embedding
(`biometrics.embedding`), and templates are scored (`biometrics.scoring`).
"""
