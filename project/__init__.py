"""The Django project: settings, URLs, ASGI, the Celery app (project.celery) and the launcher (make run)."""
