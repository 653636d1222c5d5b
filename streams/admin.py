"""Stored trades in the admin: read-only, one stream at a time, newest first, fast at any table size.

What keeps the list fast at hundreds of millions of rows: it always shows one stream (there is
no "All" choice), newest first by trade id, which the identity index of each partition walks (within a stream
ids follow trade time); the date filter's ranges prune partitions; nothing counts the whole table (the
paginator counts at most CAP rows, facets are off); no date hierarchy (it read every row for its years);
no sorting by other columns (each would sort the stream).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest

from streams.models import Instrument, PriceUpdate

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices


class CappedPaginator(Paginator):  # type: ignore[type-arg]  # generic only in the stubs
    """Counts at most CAP rows (a LIMITed subquery) instead of all of them; later pages are not offered."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        rows = cast("QuerySet[PriceUpdate]", self.object_list)  # the admin pages through its queryset
        return int(rows.order_by()[: self.CAP].count())


class StreamFilter(admin.SimpleListFilter):
    """One stream (symbol and channel) at a time; the first one when none is chosen."""

    title = "stream"
    parameter_name = "stream"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(i.id), str(i)) for i in Instrument.objects.all()]

    def value(self) -> str | None:
        chosen = super().value()
        if chosen is None and self.lookup_choices:
            return str(self.lookup_choices[0][0])
        return chosen

    def queryset(self, request: HttpRequest, queryset: QuerySet[PriceUpdate]) -> QuerySet[PriceUpdate]:
        chosen = self.value()
        if chosen is None or not chosen.isdigit():
            return queryset.none()
        return queryset.filter(instrument_id=int(chosen))

    def choices(self, changelist: Any) -> Iterator[_ListFilterChoices]:
        for lookup, title in self.lookup_choices:  # no "All": every query stays on one stream's index
            yield {"selected": self.value() == str(lookup), "display": title,
                   "query_string": changelist.get_query_string({self.parameter_name: lookup})}


@admin.register(PriceUpdate)
class PriceUpdateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic only in the stubs
    list_display = ("trade_time", "ticker_symbol", "channel", "trade_id", "price", "volume", "is_market_maker",
                    "received_time")
    list_filter = (StreamFilter, ("trade_time", admin.DateFieldListFilter), "is_market_maker")
    search_fields = ("=trade_id",)
    # Newest first; (instrument, trade_id) is unique, so Django adds no sort on the computed primary key.
    ordering = ("-trade_id", "instrument_id")
    sortable_by = ()
    list_display_links = None  # nothing to open: every column is in the list
    actions = None
    paginator = CappedPaginator
    show_full_result_count = False  # counting millions of rows on every page load is slow
    show_facets = admin.ShowFacets.NEVER

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
