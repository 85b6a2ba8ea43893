"""The bioident service (FastAPI app, storage, auth, consent, audit): built on ``biometrics``."""
