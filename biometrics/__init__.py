"""Voice (and, later, fingerprint) biometrics as a library: no web, no database.

Bytes become a typed sample (`biometrics.voice.audio`), the quality gates measure it
(`biometrics.voice.quality`), the verified ECAPA-TDNN model turns its speech into an embedding
(`biometrics.voice.embedding`), and templates are scored (`biometrics.scoring.scorer`).
"""
