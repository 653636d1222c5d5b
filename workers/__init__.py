"""The collection side, on Celery: the stream runtime, the hand-off buffer and flush, supervision, leases,
the audit, coverage and the archive import."""
