"""The web app: what a browser or a scraper meets (pages, sockets, status and metrics endpoints)."""

from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "web"
    verbose_name = "Web"
