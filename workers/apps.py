"""The workers app: Celery's side of the project (tasks, supervision, the hand-off buffer, status)."""

from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers"

    def ready(self) -> None:
        # Every Django process (web too) makes the project's Celery app the current one, so that what sends
        # a task from there (django-celery-beat's "run task" in the admin) uses the project's broker.
        # project/__init__ does not import it: the launcher runs on the system Python before .venv exists.
        import project.celery  # noqa: F401
