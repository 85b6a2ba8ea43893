"""Accuracy audits started through the API (jobs that survive replicas) and the deployment report."""
