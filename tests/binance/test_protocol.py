"""The parser and the stream-name grammar, on the spec's own payloads, recorded frames and fuzzed input."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.binance import protocol
from streams.binance.errors import InvalidStreamName, ParseError
from streams.binance.protocol import (
    AGG_TRADE,
    MAX_ID,
    TRADE,
    Reply,
    ServerShutdown,
    Trade,
    combined_stream_url,
    datetime_from_exchange,
    iso_time,
    list_subscriptions_request,
    parse_frame,
    parse_frame_general,
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


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(min_value=0, max_value=10**14 - 1), st.integers(min_value=10**14, max_value=10**17 - 1),
                 st.integers(min_value=0, max_value=10**9).map(lambda s: s * 1000),
                 st.integers(min_value=10**8, max_value=10**11).map(lambda s: s * 1_000_000)))
def test_iso_time_writes_what_isoformat_writes(timestamp: int) -> None:
    assert iso_time(timestamp) == datetime_from_exchange(timestamp).isoformat()


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


# --- The fast path (msgspec) and the general path (orjson, then Python) mean the same -------------------


class Raw(str):
    """JSON text put into a generated frame as it is (numbers orjson and msgspec read differently, say)."""


def json_text(value: object, ensure_ascii: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list) and value and isinstance(value[0], tuple):  # an object with its keys in order
        return "{" + ",".join(f"{json_text(k, ensure_ascii)}:{json_text(v, ensure_ascii)}" for k, v in value) + "}"
    return json.dumps(value, ensure_ascii=ensure_ascii)


def outcome(parse: Callable[[str, int], protocol.Event], frame: str) -> tuple[str, object]:
    try:
        return "event", parse(frame, 1723161255342999)
    except ParseError as exc:
        return "error", (exc.reason, exc.frame)


def digits(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=min_size, max_size=max_size)


# Each field: a value the exchange could send (at its limits too), or one that is wrong in some way.
good_decimals = st.one_of(
    st.tuples(digits(1, 20), digits(8, 8)).map(".".join),  # the exchange's form
    st.tuples(digits(0, 3).map(lambda d: "0" * len(d)), digits(1, 17), st.sampled_from(["", "."]), digits(0, 8),
              st.sampled_from(["", "0", "000"])).map("".join),  # others that fit numeric(28,8)
)
bad_decimals = st.one_of(
    st.tuples(digits(0, 22), st.sampled_from(["", "."]), digits(0, 11)).map("".join),
    st.sampled_from(["1.000000001", "1" * 21 + ".00000000", ".00000001", "1.", ".", "", "1e5", "-1.50000000",
                     "+1.00000000", "NaN", " 1.00000000", "1.0000000\u0663", "\u0661.00000000", "1.2.345678",
                     "1..0000000", "1_0.00000000", "\uff11.00000000", "1.0000000\u00b2"]),
    st.text(alphabet="0123456789.e-+ \u0663", max_size=31),
    st.integers(min_value=0, max_value=10) | st.floats(allow_nan=False, allow_infinity=False) | st.none(),
)
ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
good_symbols = st.text(alphabet=ALPHANUMERIC, min_size=1, max_size=20)
bad_symbols = st.one_of(
    st.text(alphabet=ALPHANUMERIC, min_size=21, max_size=22),
    st.sampled_from(["BTC-USDT", "BTC USDT", "\u00c9TH", "BTC\u0661", "\uff22\uff34\uff23", "btc\u00aa", ""]),
    st.text(max_size=22),
    st.integers() | st.none(),
)


def bad_numbers(limit: int) -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from([limit + 1, -1, 2**64, 2**64 + 1, 10**30]),
        st.sampled_from([Raw("1.0"), Raw("1e3"), Raw("1e400"), Raw("0.5")]),
        st.booleans() | st.none() | st.text(alphabet="0123456789", min_size=1, max_size=4),
    )


def good_numbers(limit: int) -> st.SearchStrategy[object]:
    return st.integers(min_value=0, max_value=limit) | st.sampled_from([0, limit, Raw("-0")])


odd_values = st.one_of(st.booleans(), st.sampled_from([Raw("1e400"), Raw("123456789012345678901234567890"),
                                                       Raw("[[[[[]]]]]"), None, "\ud800", "x"]))
GOOD = {"E": good_numbers(10**17 - 1), "T": good_numbers(10**17 - 1), "t": good_numbers(MAX_ID),
        "a": good_numbers(MAX_ID), "f": good_numbers(MAX_ID), "l": good_numbers(MAX_ID), "s": good_symbols,
        "p": good_decimals, "q": good_decimals, "m": st.booleans(), "M": st.booleans()}
BAD = {"E": bad_numbers(10**17 - 1), "T": bad_numbers(10**17 - 1), "t": bad_numbers(MAX_ID),
       "a": bad_numbers(MAX_ID), "f": bad_numbers(MAX_ID), "l": bad_numbers(MAX_ID), "s": bad_symbols,
       "p": bad_decimals, "q": bad_decimals, "m": st.sampled_from([0, 1, Raw("1e400"), None, "true"]),
       "M": odd_values, "e": st.sampled_from(["TRADE", "serverShutdown", None, 1, "trade ", "aggtrade"])}
KEYS = {TRADE: ["e", "E", "s", "t", "p", "q", "T", "m", "M"], AGG_TRADE: ["e", "E", "s", "a", "p", "q", "f", "l", "T",
                                                                          "m", "M"]}


@st.composite
def generated_frames(draw: st.DrawFn) -> str:
    """Combined-stream trade and aggTrade frames, valid or nearly so: every field near its limits, a field or
    two of a wrong value or JSON type, keys missing, extra, repeated or reordered, escapes, big numbers."""
    kind = draw(st.sampled_from([TRADE, AGG_TRADE]))
    broken = draw(st.sets(st.sampled_from(KEYS[kind]), max_size=2) | st.just(set()))
    fields: list[tuple[str, object]] = [
        (key, kind if key == "e" and key not in broken else draw((BAD if key in broken else GOOD)[key]))
        for key in KEYS[kind]
    ]
    if kind == AGG_TRADE and draw(st.booleans()):
        fields = [(k, v) for k, v in fields if k != "l"] + [("l", dict(fields)["f"])]  # f == l
    shape = draw(st.sampled_from(["as sent", "as sent", "as sent", "reordered", "a key missing", "a key added"]))
    if shape == "reordered":
        fields = draw(st.permutations(fields))
    elif shape == "a key missing":
        missing = draw(st.sampled_from(KEYS[kind]))
        fields = [(k, v) for k, v in fields if k != missing]
    elif shape == "a key added":
        key = draw(st.sampled_from([*KEYS[TRADE], *KEYS[AGG_TRADE], "x", "stream", "data"]))
        value = draw(st.one_of(GOOD.get(key, odd_values), BAD.get(key, odd_values), odd_values))
        fields.insert(draw(st.integers(0, len(fields))), (key, value))
    stream = draw(st.just("btcusdt@trade") | odd_values)
    envelope: list[tuple[str, object]] = [("stream", stream), ("data", fields)]
    envelope = draw(st.sampled_from([envelope, envelope, envelope[::-1], envelope[1:], [*envelope, ("id", 1)]]))
    return json_text(envelope, ensure_ascii=draw(st.booleans()))


@settings(max_examples=1500, deadline=None)
@given(generated_frames())
def test_the_fast_path_and_the_general_path_agree_on_every_frame(frame: str) -> None:
    assert outcome(parse_frame, frame) == outcome(parse_frame_general, frame)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), trade_like.map(json.dumps),
                 trade_like.map(lambda v: json.dumps({"stream": "x@trade", "data": v}))))
def test_the_paths_agree_on_arbitrary_text_too(frame: str) -> None:
    assert outcome(parse_frame, frame) == outcome(parse_frame_general, frame)


def combined(data: str, envelope: str = '"stream":"btcusdt@trade",') -> str:
    return "{" + envelope + '"data":{' + data + "}}"


TRADE_FIELDS = ('"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",'
                '"q":"0.02000000","T":1723161255342,"m":true')
AGG_FIELDS = ('"e":"aggTrade","E":1723161255343,"s":"BTCUSDT","a":26129,"p":"61837.63000000",'
              '"q":"0.02000000","f":100,"l":105,"T":1723161255342,"m":false,"M":true')


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (combined(TRADE_FIELDS + ',"M":true'), "trade"),
        (combined(TRADE_FIELDS), "trade"),  # M is ignored, so it may be missing
        (combined(TRADE_FIELDS + ',"M":"anything"'), "trade"),  # ... or of any type (the general path takes it)
        (combined(AGG_FIELDS), "aggTrade"),
        (combined(AGG_FIELDS.replace('"l":105', '"l":99')), "bad aggTrade"),
        (combined(TRADE_FIELDS.replace('"e":"trade",', "") + ',"e":"trade"'), "trade"),  # the tag last
        (combined(TRADE_FIELDS.replace('"e":"trade",', "")), "unknown event type None"),
        (combined(TRADE_FIELDS + ',"e":"aggTrade"'), "bad aggTrade"),  # a repeated key: the last one counts
        (combined(TRADE_FIELDS + ',"t":7'), "trade"),
        (combined(TRADE_FIELDS + ',"t":"7"'), "bad trade"),
        (combined(TRADE_FIELDS + ',"M":1e400'), "not JSON"),  # msgspec would skip it; orjson refuses it
        (combined(TRADE_FIELDS + ',"x":1e400'), "not JSON"),
        (combined(TRADE_FIELDS, '"stream":1e400,'), "not JSON"),
        (combined(TRADE_FIELDS, '"stream":"\\ud800",'), "not JSON"),
        (combined(TRADE_FIELDS, ""), "trade"),  # no stream name: the parser always took it
        (combined(TRADE_FIELDS).replace('"t":3735683259', '"t":3735683259.0'), "bad trade"),
        (combined(TRADE_FIELDS).replace('"t":3735683259', f'"t":{MAX_ID + 1}'), "bad trade"),
        (combined(TRADE_FIELDS).replace('"E":1723161255343', '"E":100000000000000000'), "bad trade"),
        (combined(TRADE_FIELDS).replace('"m":true', '"m":1'), "bad trade"),
        (combined(TRADE_FIELDS).replace('"s":"BTCUSDT"', '"s":"btcusdt"'), "trade"),
        (combined(TRADE_FIELDS).replace('"s":"BTCUSDT"', '"s":"BTC\\u0661"'), "bad trade"),
        (combined(TRADE_FIELDS).replace('"s":"BTCUSDT"', '"s":"B' + "T" * 20 + '"'), "bad trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "61837.63"), "trade"),  # the general path's
        (combined(TRADE_FIELDS).replace("61837.63000000", "61837.630000000"), "trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "61837.630000001"), "bad trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "1" * 21 + ".00000000"), "bad trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "0" * 21 + "1.00000000"), "trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "6183.7.63000000"), "bad trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "61837\\u0663.3000000"), "bad trade"),
        (combined(TRADE_FIELDS).replace("61837.63000000", "-1837.63000000"), "bad trade"),
        (combined(TRADE_FIELDS).replace("0.02000000", "2e-2000000"), "bad trade"),
        (combined(TRADE_FIELDS) + " x", "not JSON"),
        ("\ud800" + combined(TRADE_FIELDS), "not JSON"),
    ],
)
def test_each_path_gives_the_same_answer_on_the_edges(frame: str, expected: str) -> None:
    kind, result = outcome(parse_frame, frame)
    assert (kind, result) == outcome(parse_frame_general, frame)
    if kind == "event":
        assert isinstance(result, Trade) and result.channel == expected
    else:
        assert isinstance(result, tuple) and expected in result[0]


def test_the_exchanges_own_frames_never_reach_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [combined(TRADE_FIELDS + ',"M":true'), combined(AGG_FIELDS)]
    if RECORDED.exists():
        with gzip.open(RECORDED, "rt") as lines:
            frames += [line.split(" ", 1)[1].strip() for line in lines]
    expected = [parse_frame(frame, 5) for frame in frames]

    def general(frame: str, received_us: int | None = None) -> None:
        raise AssertionError(f"took the general path: {frame}")

    monkeypatch.setattr(protocol, "parse_frame_general", general)
    assert [parse_frame(frame, 5) for frame in frames] == expected
    assert all(type(trade) is Trade and trade.received_us == 5 for trade in expected)
    assert expected[1] == Trade("BTCUSDT", AGG_TRADE, 26129, "61837.63000000", "0.02000000", 1723161255342,
                                1723161255343, False, 100, 105, 5)
