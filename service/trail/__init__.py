"""The audit trail: hash-chained, signed entries, its verification, and anchors kept outside the database."""
