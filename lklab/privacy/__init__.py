"""Deletion requests at the data's edge: per-user PII data keys (envelope encryption, crypto-shredding)
and the tombstone list every fold applies. The purge of derived data across the stores is
lklab.deletion's; this package needs only the serving store."""
