"""Stored trades in the admin: read-only, filterable by symbol, searchable by trade id."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from streams.models import PriceUpdate


@admin.register(PriceUpdate)
class PriceUpdateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("trade_time", "ticker_symbol", "channel", "trade_id", "price", "volume", "is_market_maker")
    list_filter = ("ticker_symbol", "channel", "is_market_maker")
    search_fields = ("=trade_id",)
    ordering = ("-trade_time",)
    date_hierarchy = "trade_time"
    show_full_result_count = False  # counting millions of rows on every page load is slow

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[PriceUpdate], search_term: str
                           ) -> tuple[QuerySet[PriceUpdate], bool]:
        if search_term and not search_term.strip().isdigit():
            return queryset.none(), False  # trade ids are numbers; anything else matches nothing
        return super().get_search_results(request, queryset, search_term)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
