"""Creates the beat schedule of the collector's own tasks: flush, supervision and gap audit.

The intervals are read from settings when the migration runs; changing a setting later does not change
an existing periodic task (edit it in the admin, or delete it and re-run this migration)."""

import math
from datetime import datetime

from django.apps.registry import Apps
from django.conf import settings
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

# (name, task, setting, default interval in seconds)
COLLECTOR_TASKS = (
    ("flush trades", "workers.tasks.flush_trades", "COLLECTOR_FLUSH_INTERVAL", 1.0),
    ("supervise streams", "workers.tasks.supervise_streams", "COLLECTOR_SUPERVISE_INTERVAL", 10.0),
    ("audit gaps", "workers.tasks.audit_gaps", "COLLECTOR_AUDIT_INTERVAL", 300.0),
)
# A tick still queued after this long is dropped (the next tick does the same work), so a worker that was
# down does not come back to thousands of stale flush ticks.
MIN_EXPIRES = 10


def interval_spec(seconds: float) -> dict[str, int | str]:
    """Whole seconds when possible; IntervalSchedule.every is an integer, so 0.5 s is 500000 microseconds."""
    if float(seconds).is_integer():
        return {"every": int(seconds), "period": "seconds"}
    return {"every": round(seconds * 1_000_000), "period": "microseconds"}


def create_tasks(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    db = schema_editor.connection.alias  # the database being migrated, not always the default one
    for name, task, setting, default in COLLECTOR_TASKS:
        seconds = float(getattr(settings, setting, default))
        spec = interval_spec(seconds)
        schedule = IntervalSchedule.objects.using(db).filter(**spec).order_by("id").first()
        schedule = schedule or IntervalSchedule.objects.using(db).create(**spec)
        PeriodicTask.objects.using(db).get_or_create(name=name, defaults={
            "task": task, "interval": schedule, "enabled": True, "kwargs": "{}", "args": "[]",
            "expire_seconds": max(MIN_EXPIRES, math.ceil(seconds)),
            "description": f"Every {seconds:g} s ({setting} when the migration ran).",
        })
    # Historical models skip PeriodicTask.save(): tell a running beat that its schedule changed.
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": _now()})


def delete_tasks(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    db = schema_editor.connection.alias
    PeriodicTask.objects.using(db).filter(name__in=[name for name, *_ in COLLECTOR_TASKS]).delete()
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": _now()})


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


class Migration(migrations.Migration):
    dependencies = [
        ("workers", "0001_symbolstream"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_tasks, delete_tasks)]
