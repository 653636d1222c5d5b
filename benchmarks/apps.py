"""The benchmarks app: only its `benchmark` management command; nothing else of the service imports it."""

from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    name = "benchmarks"
    verbose_name = "Benchmarks"
