"""The parser and the stream-name grammar, on the spec's own payloads, recorded frames and fuzzed input."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.binance.errors import InvalidStreamName, ParseError
from streams.binance.protocol import (
    AGG_TRADE,
    TRADE,
    Reply,
    ServerShutdown,
    Trade,
    combined_stream_url,
    datetime_from_exchange,
    list_subscriptions_request,
    parse_frame,
    raw_stream_url,
    split_stream_name,
    stream_name,
    subscribe_request,
    trade_from_rest,
    unsubscribe_request,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECORDED = Path(__file__).resolve().parents[3] / "shared/data/binance-recorded/hftbacktest_spot_trades_20240808.txt.gz"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def wrap(stream: str, payload: str) -> str:
    return json.dumps({"stream": stream, "data": json.loads(payload)})


def test_it_parses_the_specs_trade_payload_raw_and_wrapped() -> None:
    raw = fixture_text("spec_trade.json")
    for frame in (raw, wrap("bnbbtc@trade", raw)):
        trade = parse_frame(frame)
        assert trade == Trade("BNBBTC", TRADE, 12345, "0.001", "100", 1672515782136, 1672515782136, True)
        assert trade.price == Decimal("0.001")
        assert trade.quantity == Decimal("100")
        assert trade.trade_time == datetime(2022, 12, 31, 19, 43, 2, 136000, tzinfo=UTC)
        assert trade.trade_time.tzinfo is UTC


def test_it_parses_the_specs_agg_trade_payload() -> None:
    trade = parse_frame(wrap("bnbbtc@aggTrade", fixture_text("spec_agg_trade.json")))
    assert isinstance(trade, Trade)
    assert (trade.channel, trade.trade_id, trade.first_trade_id, trade.last_trade_id) == (AGG_TRADE, 12345, 100, 105)
    assert trade.stream == "bnbbtc@aggTrade"


@pytest.mark.parametrize("name", ["spec_server_shutdown_raw.json", "spec_server_shutdown_combined.json"])
def test_it_recognises_the_server_shutdown_notice(name: str) -> None:
    assert parse_frame(fixture_text(name)) == ServerShutdown(1770123456789)


def test_it_parses_every_reply_form_of_the_spec() -> None:
    for case in json.loads(fixture_text("spec_replies.json")):
        reply = parse_frame(json.dumps(case["frame"]))
        assert isinstance(reply, Reply)
        assert (reply.id, reply.ok) == (case["id"], case["ok"])
        if case["ok"]:
            assert reply.result == case["result"]
        else:
            assert reply.error_code == case["code"] and reply.error_message


def test_it_reads_rest_rows_of_both_endpoints() -> None:
    row = json.loads(fixture_text("spec_rest_historical_trades.json"))[0]
    trade = trade_from_rest("BNBBTC", TRADE, row)
    assert (trade.trade_id, trade.price, trade.quantity, trade.is_buyer_maker) == (
        28457, Decimal("4.00000100"), Decimal("12.00000000"), True)
    assert trade.event_ts == trade.trade_ts == 1499865549590
    agg = trade_from_rest("BNBBTC", AGG_TRADE, json.loads(fixture_text("spec_rest_agg_trades.json"))[0])
    assert (agg.trade_id, agg.first_trade_id, agg.last_trade_id) == (26129, 27781, 27781)


def test_it_keeps_microsecond_timestamps_exact() -> None:
    assert datetime_from_exchange(1723161255342123) == datetime(2024, 8, 8, 23, 54, 15, 342123, tzinfo=UTC)
    assert datetime_from_exchange(1723161255342) == datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)


def test_it_builds_lower_case_stream_names_and_urls() -> None:
    assert stream_name("BTCUSDT", "trade") == "btcusdt@trade"
    assert stream_name("ethusdt", "aggtrade") == "ethusdt@aggTrade"
    assert split_stream_name("btcusdt@aggTrade") == ("BTCUSDT", AGG_TRADE)
    assert raw_stream_url("wss://x:9443/", "btcusdt@trade") == "wss://x:9443/ws/btcusdt@trade"
    assert combined_stream_url("wss://x", ["a1@trade", "b2@trade"]) == "wss://x/stream?streams=a1@trade/b2@trade"


@pytest.mark.parametrize(("symbol", "channel"), [("btc usdt", "trade"), ("", "trade"), ("btcusdt", "depth"),
                                                 ("btc/usdt", "trade"), ("b" * 30, "trade")])
def test_it_refuses_invalid_stream_names_with_a_clear_error(symbol: str, channel: str) -> None:
    with pytest.raises(InvalidStreamName, match="invalid"):
        stream_name(symbol, channel)


def test_it_refuses_more_streams_than_one_connection_allows() -> None:
    with pytest.raises(InvalidStreamName, match="1024"):
        combined_stream_url("wss://x", [f"s{i}@trade" for i in range(1025)])


def test_requests_have_the_specs_shape() -> None:
    assert orjson.loads(subscribe_request(["btcusdt@trade"], 1)) == {
        "method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
    assert orjson.loads(unsubscribe_request(["btcusdt@trade"], 312))["method"] == "UNSUBSCRIBE"
    assert orjson.loads(list_subscriptions_request(3)) == {"method": "LIST_SUBSCRIPTIONS", "id": 3}


GOOD = orjson.loads(fixture_text("spec_trade.json"))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"e": "depthUpdate", "E": 1}', "unknown event"),
        ('{"stream": "x@trade", "data": 5}', "not an object"),
        (orjson.dumps({**GOOD, "t": "12345"}).decode(), "bad trade"),
        (orjson.dumps({**GOOD, "p": 0.001}).decode(), "bad trade"),
        (orjson.dumps({**GOOD, "p": "NaN"}).decode(), "bad trade"),
        (orjson.dumps({**GOOD, "p": "-1.5"}).decode(), "bad trade"),
        (orjson.dumps({**GOOD, "q": "1e5"}).decode(), "bad trade"),
        (orjson.dumps({**GOOD, "m": 1}).decode(), "bad trade"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "T"}).decode(), "bad trade"),
        ('{"result": null}', "unknown event"),
        ("x" * (2 << 20), "oversized"),
    ],
)
def test_it_rejects_bad_frames_with_the_one_parse_error(frame: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_frame(frame)


def test_it_rejects_binary_frames() -> None:
    with pytest.raises(ParseError, match="binary"):
        parse_frame(fixture_text("spec_trade.json").encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=6),
    max_leaves=20,
)
trade_like = st.fixed_dictionaries(
    {"e": st.sampled_from(["trade", "aggTrade", "serverShutdown", "x"])},
    optional={key: json_values | st.integers(min_value=-5, max_value=10**18) | st.sampled_from(["1.5", "0", "-2"])
              for key in ("E", "s", "t", "a", "p", "q", "f", "l", "T", "m", "M")},
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), trade_like.map(json.dumps),
                 trade_like.map(lambda v: json.dumps({"stream": "x@trade", "data": v}))))
def test_fuzzed_frames_only_ever_raise_the_parse_error(frame: str) -> None:
    try:
        event = parse_frame(frame)
    except ParseError:
        return
    assert isinstance(event, (Trade, Reply, ServerShutdown))
    if isinstance(event, Trade):  # whatever is accepted is exact and sane
        assert event.price >= 0 and event.quantity >= 0 and event.trade_id >= 0
        assert event.trade_time.tzinfo is UTC and event.event_time.tzinfo is UTC


def test_it_parses_every_recorded_binance_frame_exactly() -> None:
    if not RECORDED.exists():
        pytest.skip(f"recorded data not present at {RECORDED}")
    with gzip.open(RECORDED, "rt") as lines:
        frames = [line.split(" ", 1)[1].strip() for line in lines]
    assert len(frames) == 5000
    last_ids: dict[str, int] = {}
    for frame in frames:
        trade = parse_frame(frame)
        source = json.loads(frame)["data"]
        assert isinstance(trade, Trade)
        assert (trade.symbol, trade.trade_id, trade.price_text, trade.quantity_text, trade.trade_ts) == (
            source["s"], source["t"], source["p"], source["q"], source["T"])
        assert trade.price == Decimal(source["p"])
        if trade.symbol in last_ids:  # the real exchange's ids are consecutive per symbol
            assert trade.trade_id == last_ids[trade.symbol] + 1
        last_ids[trade.symbol] = trade.trade_id
