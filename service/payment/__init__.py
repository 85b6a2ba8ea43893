"""Payment links: a subject's payment token sealed under their fingerprint data key, and an optional PIN."""
