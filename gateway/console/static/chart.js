// toolgate console: live figures. Polls the JSON of /console/api/metrics and draws two small
// SVG charts (request rate over time, mean latency per find_tools stage). No library.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_POINTS = 60;

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

function lineChart(svg, points) {
  clear(svg);
  const w = 400, h = 160, left = 34, bottom = 18, top = 8;
  const max = Math.max(1, ...points);
  svg.appendChild(el("line", { x1: left, y1: h - bottom, x2: w, y2: h - bottom, class: "axis" }));
  svg.appendChild(el("line", { x1: left, y1: top, x2: left, y2: h - bottom, class: "axis" }));
  svg.appendChild(el("text", { x: 2, y: top + 8 }, max.toFixed(max < 10 ? 1 : 0)));
  svg.appendChild(el("text", { x: 2, y: h - bottom }, "0"));
  if (points.length < 2) {
    svg.appendChild(el("text", { x: left + 10, y: h / 2 }, "collecting…"));
    return;
  }
  // Spread the points over the width until there are MAX_POINTS of them; then it scrolls.
  const step = (w - left) / (Math.max(points.length, 12) - 1);
  const coords = points.map((v, i) => {
    const x = left + i * step;
    const y = h - bottom - (v / max) * (h - bottom - top);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  svg.appendChild(el("polyline", { points: coords.join(" "), class: "line" }));
}

function barChart(svg, bars) {
  clear(svg);
  const w = 400, h = 160, bottom = 30, top = 14;
  if (!bars.length) {
    svg.appendChild(el("text", { x: 20, y: h / 2 }, "no find_tools yet"));
    return;
  }
  const max = Math.max(...bars.map((b) => b.value), 0.001);
  const slot = w / bars.length;
  bars.forEach((bar, i) => {
    const height = (bar.value / max) * (h - bottom - top);
    const x = i * slot + slot * 0.2;
    svg.appendChild(el("rect", { x, y: h - bottom - height, width: slot * 0.6, height, class: "bar" }));
    svg.appendChild(el("text", { x, y: h - bottom - height - 3 }, bar.value.toFixed(2)));
    svg.appendChild(el("text", { x, y: h - 12 }, bar.label));
  });
}

function ms(seconds) { return seconds === null || seconds === undefined ? "–" : (seconds * 1000).toFixed(1) + " ms"; }

function start(root) {
  const rates = [];
  let last = null;
  const rateSvg = document.getElementById("chart-rate");
  const stageSvg = document.getElementById("chart-stages");
  const set = (name, value) => {
    const node = root.querySelector(`[data-figure="${name}"]`);
    if (node) node.textContent = value;
  };

  async function poll() {
    try {
      const answer = await fetch(root.dataset.url, { credentials: "same-origin", cache: "no-store" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const f = await answer.json();
      if (!f.enabled) return;
      if (last !== null && f.at > last.at) {
        rates.push(Math.max(0, (f.requests - last.requests) / (f.at - last.at)));
        if (rates.length > MAX_POINTS) rates.shift();
        set("rate", rates[rates.length - 1].toFixed(2));
      }
      last = f;
      set("requests", Math.round(f.requests));
      set("find_p50", ms(f.find.p50));
      set("find_p95", ms(f.find.p95));
      set("upstream_errors", Math.round(f.upstream_errors));
      set("servable", Math.round(f.gauges.index_servable_tools || 0));
      lineChart(rateSvg, rates);
      const bars = Object.entries(f.stages)
        .filter(([, s]) => s.count > 0)
        .map(([label, s]) => ({ label, value: (1000 * s.sum) / s.count }));
      barChart(stageSvg, bars);
      root.dataset.polls = String(Number(root.dataset.polls || 0) + 1);
    } catch (error) {
      set("rate", "offline");
    }
  }
  poll();
  setInterval(poll, Number(root.dataset.interval) || 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("live");
  if (root) start(root);
});
