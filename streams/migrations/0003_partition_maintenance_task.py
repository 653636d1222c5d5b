"""The beat schedule of the partition maintenance (workers.tasks.maintain_partitions, streams/partitions.py):
every hour it makes the coming months' partitions and drops those past COLLECTOR_RETENTION_DAYS. The
interval is fixed (no setting is read here): partitions are made months ahead, so an hour is plenty."""

from datetime import datetime

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

NAME = "maintain partitions"
TASK = "workers.tasks.maintain_partitions"
EVERY = 3600  # seconds


def create_task(apps: Apps, schema_editor: BaseDatabaseSchemaEditor | None) -> None:
    db = schema_editor.connection.alias if schema_editor else "default"
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    schedule = IntervalSchedule.objects.using(db).filter(every=EVERY, period="seconds").order_by("id").first()
    schedule = schedule or IntervalSchedule.objects.using(db).create(every=EVERY, period="seconds")
    PeriodicTask.objects.using(db).get_or_create(name=NAME, defaults={
        "task": TASK, "interval": schedule, "enabled": True, "kwargs": "{}", "args": "[]",
        "expire_seconds": EVERY, "description": "Trades partitions: made ahead, dropped past retention.",
    })
    # Historical models skip PeriodicTask.save(): tell a running beat that its schedule changed.
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": _now()})


def delete_task(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    db = schema_editor.connection.alias
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.using(db).filter(name=NAME).delete()
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": _now()})


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


class Migration(migrations.Migration):
    dependencies = [
        ("streams", "0002_lean_trades_layout"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_task, delete_task)]
