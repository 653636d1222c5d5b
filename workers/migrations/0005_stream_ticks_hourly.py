"""Every symbol stream's own tick (`stream <sid>`, workers.tasks.ensure_stream) once an hour, spread over the hour.

The supervise pass (every 10 s) starts, restarts and stops streams; the per-stream tick is the admin's switch
and a slow second path. Every 10 s it cost beat more than a core at 1,500 streams. New streams get
this schedule from workers.registry (ENSURE_EVERY); this moves the existing ones. The values are fixed here,
as they were when it was written (no setting, no import of the registry): a later change needs its own
migration. Idempotent: a task already on the hourly schedule is left as it is."""

import zlib
from datetime import timedelta

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

ENSURE_TASK = "workers.tasks.ensure_stream"
NAME_PREFIX = "stream "
EVERY = 3600  # seconds (workers.registry.ENSURE_EVERY)
BEFORE = 10  # seconds: the schedule before this migration


def hourly(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _move(apps, schema_editor, EVERY)


def every_ten_seconds(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _move(apps, schema_editor, BEFORE)


def _move(apps: Apps, schema_editor: BaseDatabaseSchemaEditor, every: int) -> None:
    from django.utils import timezone

    db = schema_editor.connection.alias
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    schedules = IntervalSchedule.objects.using(db)
    schedule = schedules.filter(every=every, period="seconds").order_by("id").first()
    schedule = schedule or schedules.create(every=every, period="seconds")
    tasks = (PeriodicTask.objects.using(db).filter(task=ENSURE_TASK, name__startswith=NAME_PREFIX)
             .exclude(interval=schedule))
    now, moved = timezone.now(), []
    for task in tasks:
        task.interval = schedule
        if task.enabled:
            # Spread over the interval by name (as workers.registry does), not all in the same second.
            task.last_run_at = now - timedelta(seconds=zlib.crc32(task.name.encode()) % every)
        task.date_changed = now
        moved.append(task)
    PeriodicTask.objects.using(db).bulk_update(moved, ["interval", "last_run_at", "date_changed"], batch_size=500)
    if moved:  # historical models and bulk_update skip PeriodicTask.save(): tell a running beat
        PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": now})


class Migration(migrations.Migration):
    dependencies = [
        ("workers", "0004_archive_coverage"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(hourly, every_ten_seconds)]
