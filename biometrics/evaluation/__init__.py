"""Accuracy metrics for verification audits."""
