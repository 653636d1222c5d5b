// The live page: opens a symbol with its UTC day from the dataset (/api/candles/: the day's one-minute candles,
// the latest stored trades, and the newest trade id they count), then follows ws/trades/<symbol>/ (trades, and
// the streams' state pushed every heartbeat), reconnecting by itself; live trades the opening already counts
// are skipped, later ones move the last candle. Candlesticks with volume from TradingView's
// lightweight-charts (built into the static files by `make setup`; nothing is loaded from the internet).
// A page never shows "live" over a dead feed: the server says when its feed is interrupted, and a socket
// that brings nothing for three heartbeats is abandoned and opened again.
"use strict";

const TAPE_ROWS = 50;
const MAX_BARS = 3000;                 // per symbol and interval
const INTERVALS = [1, 60, 300];        // seconds per candle
const DAY_INTERVALS = [60, 300];       // built from the day's one-minute candles; 1 s from the latest trades
const CONNECT_TIMEOUT_MS = 10000;      // a socket that has not opened by then is given up and retried
const COVERAGE_EVERY_MS = 10 * 60 * 1000;
const UNITS = 100000000n;              // quantities are summed exactly, in units of 1e-8

const config = JSON.parse(document.getElementById("live-config").textContent);
const books = {};                      // symbol -> its trades, candles and day
let current = config.chosen || config.symbols[0];
let interval = 60;

const $ = (id) => document.getElementById(id);
const connectionBadge = $("connection");
const streamBadge = $("stream-state");
const tapeBody = document.querySelector("#tape tbody");
const chartBox = $("chart");

// --- numbers -------------------------------------------------------------------------------------------

function units(text) {                 // "0.01000000" -> 1000000n (exact); "1E-8" as str(Decimal) may write it
  if (/e/i.test(text)) return BigInt(Math.round(Number(text) * 1e8));
  const [whole, fraction = ""] = text.split(".");
  return BigInt(whole || "0") * UNITS + BigInt((fraction + "00000000").slice(0, 8));
}

function unitsText(value) {
  const fraction = (value % UNITS).toString().padStart(8, "0");
  return `${value / UNITS}.${fraction}`;
}

function decimals(text) {              // significant decimals of a price, to format the price scale
  const fraction = (text.split(".")[1] || "").replace(/0+$/, "");
  return Math.min(8, fraction.length);
}

function tradeMs(trade) {              // exchange times are ms; microseconds (archive, 2025 on) are scaled
  return trade.trade_ts > 1e14 ? Math.floor(trade.trade_ts / 1000) : trade.trade_ts;
}

function utcDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

// --- the book of a symbol: trades, candles per interval, the day ---------------------------------------

function newBook() {
  // `pending`: live trades that came before the opening (null once opened); `through`: the newest trade id
  // the opening counts (live trades up to it are in its candles already).
  return { trades: [], bars: Object.fromEntries(INTERVALS.map((s) => [s, new Map()])), lastBarTime: {},
           day: utcDay(Date.now()), dayOpen: null, precision: 2, last: null, dirty: new Set(), reset: new Set(),
           streams: null, pending: [], through: -1 };
}

function book(symbol) {
  if (!books[symbol]) books[symbol] = newBook();
  return books[symbol];
}

function addLive(symbol, trades) {
  const b = book(symbol);
  if (b.pending) { b.pending.push(...trades); return; }
  addTrades(symbol, trades.filter((t) => t.trade_id > b.through), INTERVALS);
}

function addTrades(symbol, trades, intervals) {
  const b = book(symbol);
  for (const t of trades) {
    const ms = tradeMs(t);
    const price = Number(t.price);
    const volume = units(t.volume);
    b.precision = Math.max(b.precision, decimals(t.price));
    for (const seconds of intervals) {
      const time = Math.floor(ms / 1000 / seconds) * seconds;
      const bars = b.bars[seconds];
      const bar = bars.get(time);
      if (bar) {
        bar.high = Math.max(bar.high, price);
        bar.low = Math.min(bar.low, price);
        bar.close = price;
        bar.volume += volume;
        bar.trades += 1;
      } else {
        bars.set(time, { time, open: price, high: price, low: price, close: price, volume, trades: 1 });
        if (bars.size > MAX_BARS) bars.delete(bars.keys().next().value);
      }
      if (time < (b.lastBarTime[seconds] ?? -Infinity)) b.reset.add(seconds);  // an older bar changed
      else b.lastBarTime[seconds] = time;
      b.dirty.add(time + ":" + seconds);
    }
    const day = utcDay(ms);
    if (day > b.day) { b.day = day; b.dayOpen = t.price; }
    else if (day === b.day && b.dayOpen === null) b.dayOpen = t.price;
    if (!b.last || ms >= tradeMs(b.last)) b.last = t;
    b.trades.push(t);
  }
  if (b.trades.length > TAPE_ROWS * 4) b.trades.splice(0, b.trades.length - TAPE_ROWS);
  if (symbol === current) scheduleRender();
  else b.dirty.clear();                // drawn whole when chosen
}

// --- the opening: the day's candles and latest trades from the dataset ----------------------------------

function addCandles(b, candles) {      // one-minute candles, oldest first, exact decimal texts
  for (const c of candles) {
    const minute = Date.parse(c.open_time.slice(0, 19) + "Z") / 1000;
    const [open, high, low, close] = [c.open, c.high, c.low, c.close].map(Number);
    const volume = units(c.volume);
    b.precision = Math.max(b.precision, ...[c.open, c.high, c.low, c.close].map(decimals));
    for (const seconds of DAY_INTERVALS) {
      const time = Math.floor(minute / seconds) * seconds;
      const bars = b.bars[seconds];
      const bar = bars.get(time);
      if (bar) {
        bar.high = Math.max(bar.high, high);
        bar.low = Math.min(bar.low, low);
        bar.close = close;
        bar.volume += volume;
        bar.trades += c.trades;
      } else {
        bars.set(time, { time, open, high, low, close, volume, trades: c.trades });
      }
      b.lastBarTime[seconds] = Math.max(b.lastBarTime[seconds] ?? -Infinity, time);
    }
  }
}

async function loadOpening(symbol) {
  const b = book(symbol);
  try {
    const response = await fetch(`${config.candles_url}?symbol=${symbol}&interval=1m`,
                                 { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(String(response.status));
    const opening = await response.json();
    if (books[symbol] !== b) return;   // chosen again since: that opening is the one
    if (opening.candles.length) b.dayOpen = opening.candles[0].open;  // the day's first trade
    addCandles(b, opening.candles);
    addTrades(symbol, opening.trades, [1]);  // the tape and the one-second candles
    b.through = opening.through_trade_id ?? -1;
  } catch (error) {
    if (books[symbol] !== b) return;   // without an opening the page goes on with the live trades alone
  }
  const pending = b.pending;
  b.pending = null;
  addLive(symbol, pending);
  if (symbol === current) scheduleRender(true);
}

// --- the chart -----------------------------------------------------------------------------------------

const Charts = window.LightweightCharts;
let chart = null, candleSeries = null, volumeSeries = null;

function makeChart() {
  if (!Charts) {
    $("chart-missing").hidden = false;
    chartBox.dataset.missing = "true";
    return;
  }
  chart = Charts.createChart(chartBox, {
    autoSize: true,
    layout: { background: { type: "solid", color: "#ffffff" }, textColor: "#333" },
    grid: { vertLines: { color: "#f0f0f0" }, horzLines: { color: "#f0f0f0" } },
    rightPriceScale: { borderColor: "#ccc" },
    timeScale: { borderColor: "#ccc", timeVisible: true, secondsVisible: true, rightOffset: 3, maxBarSpacing: 24 },
  });
  candleSeries = chart.addSeries(Charts.CandlestickSeries, {
    upColor: "#08802b", downColor: "#c0262d", borderVisible: false, wickUpColor: "#08802b", wickDownColor: "#c0262d",
  });
  candleSeries.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.3 } });
  volumeSeries = chart.addSeries(Charts.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "",
                                                          lastValueVisible: false, priceLineVisible: false });
  volumeSeries.priceScale().applyOptions({ scaleMargins: { top: 0.75, bottom: 0 } });
}

function candle(bar) {
  return { time: bar.time, open: bar.open, high: bar.high, low: bar.low, close: bar.close };
}

function volumeBar(bar) {
  return { time: bar.time, value: Number(bar.volume) / 1e8, color: bar.close >= bar.open ? "#8fd1a3" : "#eda4a7" };
}

function drawChart(b, whole) {
  const bars = b.bars[interval];
  if (candleSeries) {
    const precision = b.precision;
    candleSeries.applyOptions({ priceFormat: { type: "price", precision, minMove: 10 ** -precision } });
    if (whole || b.reset.has(interval)) {
      const sorted = [...bars.values()].sort((x, y) => x.time - y.time);
      candleSeries.setData(sorted.map(candle));
      volumeSeries.setData(sorted.map(volumeBar));
      if (whole) chart.timeScale().fitContent();  // a new symbol or interval: show all of it
    } else {
      const touched = [...b.dirty].filter((key) => key.endsWith(":" + interval))
        .map((key) => Number(key.split(":")[0])).sort((x, y) => x - y);
      for (const time of touched) {
        const bar = bars.get(time);
        if (bar) { candleSeries.update(candle(bar)); volumeSeries.update(volumeBar(bar)); }
      }
    }
  }
  b.reset.delete(interval);
  b.dirty.clear();
  let newest = null;                   // what the chart shows, for people and for the browser test
  for (const bar of bars.values()) if (!newest || bar.time > newest.time) newest = bar;
  Object.assign(chartBox.dataset, {
    bars: String(bars.size), interval: String(interval),
    lastTime: newest ? String(newest.time) : "", lastOpen: newest ? String(newest.open) : "",
    lastHigh: newest ? String(newest.high) : "", lastLow: newest ? String(newest.low) : "",
    lastClose: newest ? String(newest.close) : "", lastVolume: newest ? unitsText(newest.volume) : "",
    lastTrades: newest ? String(newest.trades) : "",
  });
}

// --- rendering, once per animation frame ---------------------------------------------------------------

let renderPending = false, renderWhole = true;

function scheduleRender(whole = false) {
  renderWhole = renderWhole || whole;
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; render(); });
}

function render() {
  if (!current) return;
  const b = book(current);
  drawChart(b, renderWhole);
  renderWhole = false;
  renderTape(b);
  renderTicker(b);
  renderStreams(b);
}

function timeText(ms) {
  return new Date(ms).toISOString().slice(11, 23);
}

function renderTape(b) {
  const rows = b.trades.slice(-TAPE_ROWS).reverse();
  tapeBody.replaceChildren(...rows.map((t) => {
    const row = document.createElement("tr");
    // The buyer was the maker: the seller took the trade (a sell); otherwise a buy.
    row.className = t.is_market_maker ? "sell" : "buy";
    row.dataset.tradeId = t.trade_id;
    for (const [name, text] of [["time", timeText(tradeMs(t))], ["price", t.price], ["quantity", t.volume],
                                ["side", t.is_market_maker ? "sell" : "buy"]]) {
      const cell = document.createElement("td");
      cell.className = name;
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  }));
}

function renderTicker(b) {
  $("symbol-name").textContent = current;
  const price = $("last-price"), change = $("day-change");
  price.textContent = b.last ? b.last.price.replace(/(\.\d*?[1-9])0+$|\.0+$/, "$1") : "–";
  price.dataset.price = b.last ? b.last.price : "";
  if (b.last && b.dayOpen !== null && Number(b.dayOpen) > 0) {
    const percent = (Number(b.last.price) / Number(b.dayOpen) - 1) * 100;
    change.textContent = `${percent >= 0 ? "+" : ""}${percent.toFixed(2)} % today`;
    change.dataset.change = percent.toFixed(2);
    change.className = percent > 0 ? "up" : percent < 0 ? "down" : "";
  } else {
    change.textContent = "–";
    change.dataset.change = "";
    change.className = "";
  }
}

function renderStreams(b) {
  if (b.streams === null) {
    streamBadge.dataset.state = "unknown";
    streamBadge.textContent = "stream: state unavailable";
    return;
  }
  const mine = b.streams.find((s) => s.stream.endsWith("@" + config.channels[current])) || b.streams[0];
  if (!mine) {
    streamBadge.dataset.state = "not running";
    streamBadge.textContent = "stream: not running";
    return;
  }
  const parts = [`stream: ${mine.state}`];
  if (mine.state === "connected") {
    parts.push(`${mine.trades_per_s} trades/s`);
    if (mine.lag_ms !== null) parts.push(`lag ${mine.lag_ms} ms`);
  }
  streamBadge.dataset.state = mine.state;
  streamBadge.textContent = parts.join(" · ");
}

// --- the connection ------------------------------------------------------------------------------------

let socket = null, retry = 0, heartbeatMs = 2000, lastFrameAt = 0, reconnectTimer = null, feed = "starting";

function setConnection(state, text) {
  connectionBadge.dataset.state = state;
  connectionBadge.textContent = text;
}

function showFeed() {
  if (feed === "interrupted") setConnection("interrupted", "feed interrupted: trades may be missing");
  else if (feed === "live") setConnection("open", "live");
  else setConnection("connecting", "connecting");
}

function expand(symbol, channel, rows) {  // a compact frame's rows (web/live/wire.py) as trades
  let id = 0, time = 0;
  return rows.map(([deltaId, price, volume, deltaTime, eventAfter, maker]) => {
    id += deltaId;
    time += deltaTime;
    return { ticker_symbol: symbol, channel, trade_id: id, price, volume, trade_ts: time,
             event_ts: time + eventAfter, is_market_maker: maker === 1 };
  });
}

function connect() {
  clearTimeout(reconnectTimer);
  if (!current) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/trades/${current.toLowerCase()}/?format=compact`);
  socket = ws;
  feed = "starting";
  lastFrameAt = Date.now();
  // Until the server says hello, the badge keeps saying why the page is not live (a silent server, a close).
  if (["open", "connecting"].includes(connectionBadge.dataset.state)) setConnection("connecting", "connecting");
  const opening = setTimeout(() => {
    if (ws.readyState === WebSocket.CONNECTING) abandon(ws, "no answer from the server");
  }, CONNECT_TIMEOUT_MS);
  ws.onopen = () => clearTimeout(opening);
  ws.onmessage = (event) => {
    if (ws !== socket) return;
    lastFrameAt = Date.now();
    const frame = JSON.parse(event.data);
    if (frame.type === "trades") {
      for (const [stream, rows] of Object.entries(frame.streams)) {
        const [lower, channel] = stream.split("@");
        const symbol = lower.toUpperCase();
        if (channel === config.channels[symbol]) addLive(symbol, expand(symbol, channel, rows));
      }
    } else if (frame.type === "hello") {
      retry = 0;
      heartbeatMs = frame.heartbeat_s * 1000;
      setConnection("connecting", "connecting");
    } else if (frame.type === "state") {
      if (frame.feed !== feed) { feed = frame.feed; showFeed(); }
      book(current).streams = frame.streams;
      scheduleRender();
    }
  };
  ws.onclose = (event) => {
    clearTimeout(opening);
    if (ws !== socket) return;       // replaced already (another symbol, or abandoned as silent)
    socket = null;
    closed(event.code, event.reason);
  };
}

function closed(code, reason) {
  const delay = Math.round(Math.min(30000, 500 * 2 ** retry++) * Math.random());  // full jitter, capped
  const again = `; reconnecting in ${Math.ceil(delay / 1000)} s`;
  if (code === 4400) { setConnection("closed", "closed: unknown symbol"); return; }
  if (code === 1013) setConnection("busy", `server busy${again}`);
  else if (code === 4408) setConnection("dropped", `dropped: this page fell behind${again}`);
  else if (code === 1001 || code === 1012) setConnection("closed", `server restarting${again}`);
  else setConnection("closed", `closed${reason ? ": " + reason : ` (${code})`}${again}`);
  reconnectTimer = setTimeout(connect, delay);
}

function abandon(ws, why) {            // a socket that brings nothing: give it up without waiting for its close
  if (ws !== socket) return;
  socket = null;
  ws.onmessage = ws.onclose = null;
  try { ws.close(); } catch (error) { /* closing a socket that never opened */ }
  setConnection("silent", `${why}; reconnecting`);
  const delay = Math.round(Math.min(30000, 500 * 2 ** retry++) * Math.random());
  reconnectTimer = setTimeout(connect, delay);
}

setInterval(() => {                    // the watchdog: the server speaks at least every heartbeat
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  const silentFor = Date.now() - lastFrameAt;
  if (silentFor > Math.max(1000, 3 * heartbeatMs)) {
    abandon(socket, `no data from the server for ${Math.round(silentFor / 1000)} s`);
  }
}, 250);

// --- the day's completeness (staff only: /api/coverage/ answers those who may see it) ------------------

async function loadCoverage() {
  const badge = $("completeness");
  const symbol = current;
  if (!config.coverage_url || !symbol) { badge.dataset.verdict = "unavailable"; badge.textContent = ""; return; }
  const today = utcDay(Date.now());
  try {
    const response = await fetch(`${config.coverage_url}?symbol=${symbol}&from=${today}&to=${today}`,
                                 { headers: { Accept: "application/json" }, redirect: "manual" });
    if (symbol !== current) return;
    if (!response.ok) throw new Error(String(response.status));
    const days = (await response.json()).days || [];
    const day = days.find((d) => d.channel === "trade") || days[0];
    if (!day) { badge.dataset.verdict = "unchecked"; badge.textContent = "today: not checked yet"; return; }
    badge.dataset.verdict = day.verdict;
    const holes = day.holes ? day.holes.length : 0;
    badge.textContent = day.verdict === "complete" ? `today: complete (${day.trades.toLocaleString("en")} trades)`
      : day.verdict === "holes" ? `today: ${holes} hole${holes === 1 ? "" : "s"} (${day.trades.toLocaleString("en")} trades)`
      : "today: not checked yet";
  } catch (error) {
    if (symbol !== current) return;
    badge.dataset.verdict = "unavailable";   // not deployed, not allowed, or down: the page goes on without it
    badge.textContent = "";
  }
}

// --- choosing -------------------------------------------------------------------------------------------

function chooseInterval(seconds) {
  interval = seconds;
  document.querySelectorAll("#intervals button").forEach(
    (b) => b.setAttribute("aria-pressed", String(Number(b.dataset.seconds) === seconds)));
  scheduleRender(true);
}

function chooseSymbol(symbol) {
  current = symbol;
  books[symbol] = newBook();           // opened afresh: its day from the dataset, then live
  document.querySelectorAll("#symbols button").forEach(
    (b) => b.setAttribute("aria-pressed", String(b.dataset.symbol === symbol)));
  if (socket) { const old = socket; socket = null; old.close(); }
  retry = 0;
  scheduleRender(true);
  connect();
  loadOpening(symbol);
  loadCoverage();
}

makeChart();
document.querySelectorAll("#symbols button").forEach((b) => b.addEventListener("click", () => chooseSymbol(b.dataset.symbol)));
document.querySelectorAll("#intervals button").forEach(
  (b) => b.addEventListener("click", () => chooseInterval(Number(b.dataset.seconds))));
chooseInterval(interval);
if (current) {
  chooseSymbol(current);
  setInterval(loadCoverage, COVERAGE_EVERY_MS);
}
