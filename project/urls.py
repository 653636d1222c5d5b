"""URL routes."""

from django.contrib import admin
from django.urls import path

from workers import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/streams/", views.streams_api, name="streams-api"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
]
