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


class AuditMark(models.Model):
    """Up to which trade id a stream's stored trades are verified complete (workers.audit)."""

    stream = models.CharField(max_length=40, unique=True, help_text="the stream id, like btcusdt@trade")
    verified_through = models.BigIntegerField(help_text="every id up to this one is stored")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.stream} verified through {self.verified_through}"
