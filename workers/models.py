"""The symbol streams as a proxy of django-celery-beat's PeriodicTask, for their own page in the admin."""

from __future__ import annotations

import logging
from typing import ClassVar

from django.db import models
from django_celery_beat.models import PeriodicTask

logger = logging.getLogger(__name__)

ENSURE_TASK = "workers.tasks.ensure_stream"  # the task every symbol stream runs (see workers.registry)


class SymbolStreamManager(models.Manager["SymbolStream"]):
    def get_queryset(self) -> models.QuerySet[SymbolStream]:
        return super().get_queryset().filter(task=ENSURE_TASK)


class SymbolStream(PeriodicTask):
    """A PeriodicTask running workers.tasks.ensure_stream; workers.registry creates and changes them."""

    # The stream tasks only: a manager of another type than PeriodicTask's, hence the ignore.
    objects: ClassVar[SymbolStreamManager] = SymbolStreamManager()  # type: ignore[assignment]

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


class ArchiveFile(models.Model):
    """A file of Binance's archive imported whole (workers.archive_import): the marker that makes a second
    import skip it, unless the archive re-published it (another checksum)."""

    symbol = models.CharField(max_length=20)
    name = models.CharField(max_length=64, help_text="like BTCUSDT-trades-2026-11.zip")
    sha256 = models.CharField(max_length=64, help_text="the checksum the file was verified against")
    trades = models.BigIntegerField(help_text="rows in the file")
    inserted = models.BigIntegerField(help_text="rows it added (the others were stored already)")
    first_id = models.BigIntegerField(null=True, blank=True)
    last_id = models.BigIntegerField(null=True, blank=True)
    imported_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["symbol", "name"], name="unique_archive_file")]

    def __str__(self) -> str:
        return f"{self.name} ({self.trades} trades)"


class Verdict(models.TextChoices):
    COMPLETE = "complete"
    HOLES = "holes"
    UNCHECKED = "unchecked"


class DayCoverage(models.Model):
    """Completeness of one stream on one UTC day (workers.coverage): what is stored, the holes inside the
    day and at its edges, and what the archive said the day holds, when it was imported."""

    symbol = models.CharField(max_length=20)
    channel = models.CharField(max_length=8)
    day = models.DateField()
    trades = models.BigIntegerField(default=0, help_text="trades stored")
    first_id = models.BigIntegerField(null=True, blank=True)
    last_id = models.BigIntegerField(null=True, blank=True)
    holes = models.JSONField(default=list, blank=True, help_text="[[first id, last id], ...] missing")
    archive_count = models.BigIntegerField(null=True, blank=True, help_text="trades in the archive's file")
    archive_first_id = models.BigIntegerField(null=True, blank=True)
    archive_last_id = models.BigIntegerField(null=True, blank=True)
    verdict = models.CharField(max_length=10, choices=Verdict.choices, default=Verdict.UNCHECKED)
    dirty = models.BooleanField(default=True, help_text="to be computed again (stored rows changed)")
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["symbol", "channel", "day"], name="unique_day_coverage")]
        verbose_name_plural = "day coverage"

    def __str__(self) -> str:
        return f"{self.symbol} {self.channel} {self.day}: {self.verdict}"
