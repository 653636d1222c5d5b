"""The symbol streams as a proxy of django-celery-beat's PeriodicTask, for their own page in the admin."""

from __future__ import annotations

import logging

from django.db import models
from django_celery_beat.models import PeriodicTask

logger = logging.getLogger(__name__)

ENSURE_TASK = "workers.tasks.ensure_stream"  # the task every symbol stream runs (see workers.registry)


class SymbolStreamManager(models.Manager["SymbolStream"]):
    def get_queryset(self) -> models.QuerySet[SymbolStream]:
        return super().get_queryset().filter(task=ENSURE_TASK)


class SymbolStream(PeriodicTask):
    """A PeriodicTask running workers.tasks.ensure_stream; workers.registry creates and changes them."""

    objects = SymbolStreamManager()

    class Meta:
        proxy = True
        verbose_name = "symbol stream"
        verbose_name_plural = "symbol streams"
