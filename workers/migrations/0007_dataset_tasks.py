"""The beat schedule of the dataset (workers.seal): sealing complete days into the lake and leaving cold ones
to it (every 5 minutes), and the scrub that verifies sealed files and hot days again (every 10 minutes; each
pass takes its share, so that every day is verified within DATASET_SCRUB_DAYS). Fixed intervals (no setting
is read here): change them in the admin."""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

TASKS = (  # (name, task, seconds, description)
    ("seal days", "workers.tasks.seal_days", 300, "Complete days sealed into the lake; the hot window kept."),
    ("scrub lake", "workers.tasks.scrub_lake", 600, "Sealed files and hot days verified again, a share a pass."),
)


def create_tasks(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from django.utils import timezone

    db = schema_editor.connection.alias
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for name, task, every, description in TASKS:
        schedule = IntervalSchedule.objects.using(db).filter(every=every, period="seconds").order_by("id").first()
        schedule = schedule or IntervalSchedule.objects.using(db).create(every=every, period="seconds")
        PeriodicTask.objects.using(db).get_or_create(name=name, defaults={
            "task": task, "interval": schedule, "enabled": True, "kwargs": "{}", "args": "[]",
            "expire_seconds": every, "description": description})
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_tasks(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from django.utils import timezone

    db = schema_editor.connection.alias
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.using(db).filter(name__in=[name for name, *_ in TASKS]).delete()
    PeriodicTasks.objects.using(db).update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("workers", "0006_listing_check_task"),
        ("streams", "0004_sealed_day"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_tasks, delete_tasks)]
