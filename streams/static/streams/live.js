// The live page: opens with the latest stored trades, then follows ws/trades/<symbol>/ (reconnecting by
// itself), draws the price on a canvas and keeps a tape. No library: nothing is loaded from the internet.
"use strict";

const TAPE_ROWS = 50;
const CHART_POINTS = 500;
const initial = JSON.parse(document.getElementById("initial-trades").textContent);
const symbols = Object.keys(initial);
const trades = Object.fromEntries(symbols.map((s) => [s, initial[s].slice(-CHART_POINTS)]));
let current = symbols[0];
let socket = null;
let retry = 0;

const tapeBody = document.querySelector("#tape tbody");
const chart = document.getElementById("chart");
const connection = document.getElementById("connection");
const streamState = document.getElementById("stream-state");

function setConnection(state) {
  connection.dataset.state = state;
  connection.textContent = state === "open" ? "live" : state;
}

function timeText(ms) {
  return new Date(ms).toISOString().slice(11, 23);
}

function renderTape() {
  const rows = (trades[current] || []).slice(-TAPE_ROWS).reverse();
  tapeBody.replaceChildren(...rows.map((t) => {
    const row = document.createElement("tr");
    // The buyer was the maker: the seller took the trade (a sell); otherwise a buy.
    row.className = t.is_market_maker ? "sell" : "buy";
    row.dataset.tradeId = t.trade_id;
    for (const [name, text] of [["time", timeText(t.trade_ts)], ["price", t.price], ["quantity", t.volume],
                                ["side", t.is_market_maker ? "sell" : "buy"]]) {
      const cell = document.createElement("td");
      cell.className = name;
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  }));
}

function renderChart() {
  const points = (trades[current] || []).map((t) => Number(t.price));
  const context = chart.getContext("2d");
  context.clearRect(0, 0, chart.width, chart.height);
  chart.dataset.points = String(points.length);
  chart.dataset.last = points.length ? String(points[points.length - 1]) : "";
  if (points.length < 2) return;
  const low = Math.min(...points), high = Math.max(...points), span = high - low || 1;
  context.beginPath();
  points.forEach((price, i) => {
    const x = (i / (points.length - 1)) * (chart.width - 20) + 10;
    const y = chart.height - 10 - ((price - low) / span) * (chart.height - 20);
    if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.strokeStyle = "#1f5fbf";
  context.lineWidth = 1.5;
  context.stroke();
}

function add(batch) {
  for (const t of batch) {
    const list = trades[t.ticker_symbol] || (trades[t.ticker_symbol] = []);
    list.push(t);
    if (list.length > CHART_POINTS) list.splice(0, list.length - CHART_POINTS);
  }
  renderTape();
  renderChart();
}

function connect() {
  if (!current) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const symbol = current;
  socket = new WebSocket(`${scheme}://${location.host}/ws/trades/${symbol.toLowerCase()}/`);
  setConnection("connecting");
  socket.onopen = () => { retry = 0; setConnection("open"); };
  socket.onmessage = (event) => add(JSON.parse(event.data));
  socket.onclose = () => {
    setConnection("closed");
    if (symbol !== current) return;  // switched symbols: the new socket is already on its way
    const delay = Math.min(30000, 500 * 2 ** retry++) * Math.random();  // full jitter, capped
    setTimeout(connect, delay);
  };
}

function choose(symbol) {
  current = symbol;
  document.querySelectorAll("#symbols button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.symbol === symbol)));
  if (socket) socket.close();
  renderTape();
  renderChart();
  connect();
  pollStatus();
}

async function pollStatus() {
  try {
    const response = await fetch("/api/streams/");
    const body = await response.json();
    const mine = body.streams.find((s) => s.stream === `${current.toLowerCase()}@trade`)
      || body.streams.find((s) => s.stream.startsWith(current.toLowerCase() + "@"));
    const state = mine ? mine.state : "not running";
    streamState.dataset.state = state;
    streamState.textContent = `stream: ${state}`;
  } catch (error) {
    streamState.dataset.state = "unknown";
    streamState.textContent = "stream: status unavailable";
  }
}

document.querySelectorAll("#symbols button").forEach((b) => b.addEventListener("click", () => choose(b.dataset.symbol)));
if (current) {
  choose(current);
  setInterval(pollStatus, 3000);
}
