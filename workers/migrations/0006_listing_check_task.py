"""The beat schedule of the listing check (workers.tasks.check_listing, workers/listing.py): every 5 minutes one
exchangeInfo call (weight 20) says which enabled symbols the exchange does not trade now; they are reported and
stay enabled. The interval is fixed here (no setting is read); change it in the admin."""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

NAME = "check listing"
TASK = "workers.tasks.check_listing"
EVERY = 300  # seconds


def create_task(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from django.utils import timezone

    db = schema_editor.connection.alias
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    schedule = IntervalSchedule.objects.using(db).filter(every=EVERY, period="seconds").order_by("id").first()
    schedule = schedule or IntervalSchedule.objects.using(db).create(every=EVERY, period="seconds")
    PeriodicTask.objects.using(db).get_or_create(name=NAME, defaults={
        "task": TASK, "interval": schedule, "enabled": True, "kwargs": "{}", "args": "[]",
        "expire_seconds": EVERY, "description": "Enabled symbols that the exchange does not trade now (reported).",
    })
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_task(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from django.utils import timezone

    db = schema_editor.connection.alias
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.using(db).filter(name=NAME).delete()
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("workers", "0005_stream_ticks_hourly"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_task, delete_task)]
