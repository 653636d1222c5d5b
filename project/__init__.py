"""The Django project: settings, environment readers, logging, the Celery app and the launcher (make run)."""
