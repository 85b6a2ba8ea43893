"""The fraudster watchlist: known fraudsters' voices per tenant (``fraud`` role), screened on every voice
verification and enrolment."""
