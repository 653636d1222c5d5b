"""Symbol streams in the admin: which (symbol, channel) pairs should run, and how each one is doing live."""

from __future__ import annotations

import logging
from typing import Any

import redis
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from streams.binance.errors import InvalidStreamName, StreamError, UnknownSymbol
from streams.binance.protocol import CHANNELS, TRADE, normalize_symbol
from workers import listing, registry
from workers.deadletters import dead_letter_total, recent_dead_letters
from workers.keys import StreamId, stream_id
from workers.models import ArchiveFile, DayCoverage, SymbolStream
from workers.redis import sync_redis, text
from workers.status import StreamStatus, read_status

logger = logging.getLogger(__name__)

NONE = "—"
_UNAVAILABLE = StreamStatus(state="status unavailable")


class AddSymbolStreamForm(forms.ModelForm):  # type: ignore[type-arg]  # generic only in the stubs
    """Symbol and channel; the symbol is checked with the exchange before anything is created."""

    symbol = forms.CharField(max_length=20, help_text="The exchange's symbol, like BTCUSDT.")
    channel = forms.ChoiceField(choices=[(c, c) for c in CHANNELS], initial=TRADE)

    class Meta:
        model = SymbolStream
        fields: list[str] = []

    def clean_symbol(self) -> str:
        try:
            return normalize_symbol(self.cleaned_data["symbol"])
        except InvalidStreamName as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "symbol" in cleaned:
            self._check_with_exchange(cleaned["symbol"])
        return cleaned

    def validate_unique(self) -> None:
        """The registry keeps one task per stream (by name); PeriodicTask's own check wants a schedule,
        which the registry sets, not this form."""

    def _check_with_exchange(self, symbol: str) -> None:
        try:
            registry.validate_symbol(symbol)
        except UnknownSymbol as exc:
            self.add_error("symbol", str(exc))
        except StreamError as exc:
            logger.warning("could not validate symbol %s with the exchange: %s", symbol, exc)
            self.add_error(None, f"Could not check {symbol} with the exchange, try again: {exc}")


class EnableTradingForm(forms.Form):
    """Every symbol the exchange trades now, of one quote asset or all; one exchangeInfo call."""

    quote = forms.CharField(max_length=10, required=False, help_text="Like USDT; empty for every quote asset.")
    channel = forms.ChoiceField(choices=[(c, c) for c in CHANNELS], initial=TRADE)

    def clean_quote(self) -> str:
        quote: str = self.cleaned_data["quote"].strip().upper()
        if quote and not quote.isalnum():
            raise forms.ValidationError(f"invalid quote asset {quote!r}: letters and digits, like USDT")
        return quote


@admin.register(SymbolStream)
class SymbolStreamAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic only in the stubs
    list_display = ("symbol", "channel", "enabled", "exchange_status", "state", "last_trade_age", "trades_per_s",
                    "gaps_healed", "ids_back", "errors")
    list_filter = ("enabled",)
    search_fields = ("name",)
    ordering = ("name",)
    actions = ("enable_selected", "disable_selected")
    fields = ("name", "enabled", "kwargs", "interval", "last_run_at", "total_run_count", "date_changed")
    add_form = AddSymbolStreamForm

    # --- list columns ---------------------------------------------------------------------------------

    @admin.display(description="symbol")
    def symbol(self, obj: SymbolStream) -> str:
        key = _key(obj)
        return key.symbol if key else obj.name

    @admin.display(description="channel")
    def channel(self, obj: SymbolStream) -> str:
        key = _key(obj)
        return key.channel if key else NONE

    @admin.display(description="exchange")
    def exchange_status(self, obj: SymbolStream) -> str:
        """The symbol's status at the last listing check when it is not TRADING (the stream stays enabled)."""
        key = _key(obj)
        if key is None:
            return NONE
        try:
            status = sync_redis().hget(listing.NOT_TRADING, key.symbol)
        except redis.RedisError as exc:
            logger.warning("cannot read the exchange status of %s: %s", key.symbol, exc)
            return _UNAVAILABLE.state
        return f"not trading ({text(status)})" if status else NONE

    @admin.display(description="state")
    def state(self, obj: SymbolStream) -> str:
        return _field(obj, "state")

    @admin.display(description="last trade age (s)")
    def last_trade_age(self, obj: SymbolStream) -> str:
        return _field(obj, "last_trade_age", "{:.1f}")

    @admin.display(description="trades/s")
    def trades_per_s(self, obj: SymbolStream) -> str:
        return _field(obj, "trades_per_s", "{:.1f}")

    @admin.display(description="gaps healed")
    def gaps_healed(self, obj: SymbolStream) -> str:
        return _field(obj, "gaps_healed", "{:.0f}")

    @admin.display(description="ids back")
    def ids_back(self, obj: SymbolStream) -> str:
        return _field(obj, "ids_back", "{:.0f}")

    @admin.display(description="errors (last)")
    def errors(self, obj: SymbolStream) -> str:
        status = _status(obj)
        if status is None or not status.errors:
            return NONE
        return f"{status.errors} ({status.last_error})"

    # --- dead letters: what could not be stored, and why ---------------------------------------------------

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.dead_letters_view)
        enable = self.admin_site.admin_view(self.enable_trading_view)
        return [path("dead-letters/", view, name="workers_dead_letters"),
                path("enable-trading/", enable, name="workers_enable_trading"), *super().get_urls()]

    # --- every trading symbol at once (the admin's `streams enable --all --quote X`) ------------------------

    def enable_trading_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = EnableTradingForm(request.POST or None)
        if request.method == "POST" and form.is_valid() and (line := self._enable_trading(form)):
            self.message_user(request, line, messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:workers_symbolstream_changelist"))
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta,
                   "title": "Enable every trading symbol"}
        return TemplateResponse(request, "admin/workers/enable_trading.html", context)

    def _enable_trading(self, form: EnableTradingForm) -> str | None:
        """The summary line, or None with the form's error saying why nothing was enabled."""
        quote, channel = form.cleaned_data["quote"], form.cleaned_data["channel"]
        try:
            chosen = listing.trading_symbols([quote] if quote else None)
        except StreamError as exc:
            logger.warning("could not list the exchange's symbols: %s", exc)
            form.add_error(None, f"Could not ask the exchange for its symbols, try again: {exc}")
            return None
        if not chosen.trading and not chosen.not_trading:
            form.add_error("quote", f"The exchange lists no symbol quoted in {quote}.")
            return None
        changes = registry.enable_streams([stream_id(symbol, channel) for symbol in chosen.trading])
        return registry.summary("enabled", changes, chosen.not_trading)

    def dead_letters_view(self, request: HttpRequest) -> HttpResponse:
        client = sync_redis()
        context = {**self.admin_site.each_context(request), "total": dead_letter_total(client),
                   "letters": recent_dead_letters(client, 200)}
        return TemplateResponse(request, "admin/workers/dead_letters.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:
            total = dead_letter_total(sync_redis())
        except redis.RedisError as exc:
            logger.warning("cannot read the dead letters: %s", exc)
            total = None
        if total:
            link = format_html('{} dead letters: <a href="{}">what could not be stored, and why</a>', total,
                               reverse("admin:workers_dead_letters"))
            self.message_user(request, link, messages.WARNING)
        return super().changelist_view(request, extra_context)

    # --- actions (through the registry, which tells beat about the change) -----------------------------

    @admin.action(description="Enable")
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[SymbolStream]) -> None:
        changes = registry.enable_streams(_keys(queryset))  # one transaction, one notice to beat
        self.message_user(request, _capital(registry.summary("enabled", changes)), messages.SUCCESS)

    @admin.action(description="Disable")
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[SymbolStream]) -> None:
        changes = registry.disable_streams(_keys(queryset))
        self.message_user(request, _capital(registry.summary("disabled", changes)), messages.SUCCESS)

    # --- the add form creates through the registry; other changes only through the actions -------------

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
            kwargs["fields"] = ["symbol", "channel"]
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["symbol", "channel"] if obj is None else self.fields

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        task = registry.enable_stream(form.cleaned_data["symbol"], form.cleaned_data["channel"])
        return SymbolStream.objects.get(pk=task.pk)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)  # enable_stream has saved a new one

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the name and kwargs are the stream's identity; enable/disable are the actions

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # disable instead: the stream's history (last run, run count) stays


def _keys(queryset: QuerySet[SymbolStream]) -> list[StreamId]:
    """The streams of the selected rows with usable kwargs (two columns read, not every field)."""
    keys = []
    for name, kwargs in queryset.values_list("name", "kwargs"):
        try:
            keys.append(registry.key_of(kwargs))
        except (ValueError, KeyError, TypeError):
            logger.warning("periodic task %r has unusable kwargs %r; left as it is", name, kwargs)
    return keys


def _capital(line: str) -> str:
    return line[:1].upper() + line[1:]


def _key(obj: SymbolStream) -> StreamId | None:
    """The stream of the row, or None for a task whose kwargs were edited into nonsense."""
    try:
        return registry.stream_key(obj)
    except (ValueError, KeyError, TypeError):
        return None


def _status(obj: SymbolStream) -> StreamStatus | None:
    """The row's live status, read once per row (several columns show it)."""
    # Kept on the row object itself, which declares no such attribute (hence the ignores).
    if not hasattr(obj, "_live_status"):
        obj._live_status = _read(obj)  # type: ignore[attr-defined]
    return obj._live_status  # type: ignore[attr-defined, no-any-return]


def _read(obj: SymbolStream) -> StreamStatus | None:
    sid = _key(obj)
    if sid is None:
        return None
    try:
        return read_status(sid)
    except redis.RedisError as exc:
        logger.warning("cannot read the status of stream %s: %s", sid, exc)
        return _UNAVAILABLE


def _field(obj: SymbolStream, name: str, fmt: str = "{}") -> str:
    status = _status(obj)
    value = None if status is None else getattr(status, name)
    return NONE if value is None or value == "" else fmt.format(value)


class _ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]  # generic only in the stubs
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ArchiveFile)
class ArchiveFileAdmin(_ReadOnly):
    """Files of Binance's archive imported whole (`import_archive`): deleting one makes the next import take it
    again."""

    list_display = ("name", "symbol", "trades", "inserted", "first_id", "last_id", "sha256", "imported_at")
    list_filter = ("symbol",)
    search_fields = ("name",)
    ordering = ("symbol", "name")


@admin.register(DayCoverage)
class DayCoverageAdmin(_ReadOnly):
    """Completeness per stream and UTC day (workers.coverage), as `manage.py coverage` shows it."""

    list_display = ("day", "symbol", "channel", "verdict", "trades", "first_id", "last_id", "archive_count", "holes")
    list_filter = ("verdict", "channel", "symbol")
    date_hierarchy = "day"
    ordering = ("-day", "symbol", "channel")
