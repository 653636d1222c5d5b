"""The Celery side: stream tasks, flush, supervision and audit (built in a later issue)."""
