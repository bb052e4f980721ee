// Line charts as inline SVG, drawn here. The page ships every asset itself and must work offline,
// so a CDN is out, and no chart library is installed (none is in requirements.lock); loss curves
// and serving series need only axes, lines, points and a legend, which this draws in ~150 lines.
// Each <figure class="chart"> holds its series as JSON: [{name, points: [[x, y], ...], dashed, color}].
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#9c36b5", "#c92a2a", "#0c8599"];
  const HEIGHT = 280;
  const MARGIN = { top: 14, right: 18, bottom: 40, left: 64 };

  function node(name, attrs, parent) {
    const element = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) element.setAttribute(key, value);
    if (parent) parent.appendChild(element);
    return element;
  }

  function text(parent, x, y, content, anchor) {
    const label = node("text", { x: x, y: y, "text-anchor": anchor || "middle" }, parent);
    label.textContent = content;
    return label;
  }

  // About `count` round values between lo and hi (1, 2 or 5 times a power of ten apart).
  function ticks(lo, hi, count) {
    if (hi === lo) return [lo];
    const raw = (hi - lo) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const values = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(+v.toPrecision(12));
    return values;
  }

  // Time ticks on whole minutes, hours or days (UTC), about `count` of them.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * 60e3);
  function timeTicks(lo, hi, count) {
    const step = TIME_STEPS.find((s) => (hi - lo) / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
    const values = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) values.push(v);
    return values;
  }

  function logTicks(lo, hi) {
    const values = [];
    for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) values.push(Math.pow(10, p));
    return values.filter((v) => v >= lo / 1.0001 && v <= hi * 1.0001);
  }

  function formatNumber(v) {
    if (v === 0) return "0";
    const size = Math.abs(v);
    if (size >= 1e4 || size < 1e-3) return v.toExponential(1);
    return String(+v.toPrecision(4));
  }

  function formatTime(ms, span) {
    const iso = new Date(ms).toISOString();
    return span > 2 * 86400e3 ? iso.slice(5, 10) + " " + iso.slice(11, 16) : iso.slice(11, 16);
  }

  function scales(series, xKind, width) {
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    // A loss falls by orders of magnitude: on a log scale its whole course stays readable.
    const log = y0 > 0 && y1 / y0 > 100;
    if (!log) {
      if (y0 > 0 && y0 < (y1 - y0)) y0 = 0;
      if (y0 === y1) { y0 -= 1; y1 += 1; }
      const pad = (y1 - y0) * 0.05;
      y1 += pad;
      if (y0 !== 0) y0 -= pad;
    }
    const plotW = width - MARGIN.left - MARGIN.right, plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const ly0 = log ? Math.log10(y0) : y0, ly1 = log ? Math.log10(y1) : y1;
    return {
      log: log, x0: x0, x1: x1, y0: y0, y1: y1, xKind: xKind, width: width,
      x: (v) => MARGIN.left + ((v - x0) / (x1 - x0)) * plotW,
      y: (v) => MARGIN.top + plotH - (((log ? Math.log10(v) : v) - ly0) / (ly1 - ly0 || 1)) * plotH,
    };
  }

  function axes(svg, s, xLabel, yLabel) {
    const group = node("g", { class: "axis" }, svg);
    const bottom = HEIGHT - MARGIN.bottom, right = s.width - MARGIN.right;
    for (const v of s.log ? logTicks(s.y0, s.y1) : ticks(s.y0, s.y1, 5)) {
      node("line", { class: "grid-line", x1: MARGIN.left, x2: right, y1: s.y(v), y2: s.y(v) }, group);
      text(group, MARGIN.left - 8, s.y(v) + 4, formatNumber(v), "end");
    }
    for (const v of s.xKind === "time" ? timeTicks(s.x0, s.x1, 6) : ticks(s.x0, s.x1, 6)) {
      node("line", { class: "axis-line", x1: s.x(v), x2: s.x(v), y1: bottom, y2: bottom + 4 }, group);
      text(group, s.x(v), bottom + 16, s.xKind === "time" ? formatTime(v, s.x1 - s.x0) : formatNumber(v));
    }
    node("line", { class: "axis-line", x1: MARGIN.left, x2: right, y1: bottom, y2: bottom }, group);
    text(group, (MARGIN.left + right) / 2, HEIGHT - 6, xLabel);
    const label = text(group, 0, 0, yLabel + (s.log ? " (log scale)" : ""));
    label.setAttribute("transform", `translate(14 ${(MARGIN.top + bottom) / 2}) rotate(-90)`);
  }

  function line(svg, s, series, color) {
    const group = node("g", { class: "series", "data-series": series.name }, svg);
    const path = series.points.map((p, i) => (i ? "L" : "M") + s.x(p[0]).toFixed(1) + " " + s.y(p[1]).toFixed(1));
    node("path", {
      d: path.join(" "), fill: "none", stroke: color, "stroke-width": 2,
      "stroke-dasharray": series.dashed ? "6 4" : "none", "stroke-linejoin": "round",
    }, group);
    for (const p of series.points) {
      const point = node("circle", { class: "point", cx: s.x(p[0]), cy: s.y(p[1]), r: 3, fill: color }, group);
      const x = s.xKind === "time" ? new Date(p[0]).toISOString().slice(0, 16).replace("T", " ") : p[0];
      node("title", {}, point).textContent = `${series.name}: ${x} → ${formatNumber(p[1])}`;
    }
  }

  function legend(figure, series, colors) {
    const box = document.createElement("div");
    box.className = "legend-row";
    series.forEach((one, i) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      const swatch = node("svg", { width: 26, height: 10, class: "swatch" });
      node("line", { x1: 0, x2: 26, y1: 5, y2: 5, stroke: colors[i], "stroke-width": 2,
        "stroke-dasharray": one.dashed ? "6 4" : "none" }, swatch);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(" " + one.name));
      box.appendChild(item);
    });
    figure.appendChild(box);
  }

  function draw(figure) {
    if (figure.dataset.drawn) return;
    const data = figure.querySelector('script[type="application/json"]');
    const series = JSON.parse(data.textContent).filter((s) => s.points.length);
    figure.dataset.drawn = "1";
    if (!series.length) {
      figure.insertAdjacentHTML("beforeend", '<p class="chart-empty">Nothing to draw.</p>');
      return;
    }
    // Drawn at the figure's own width, one SVG unit a pixel, so text keeps its size on any screen.
    const width = Math.max(320, Math.round(figure.clientWidth || 640));
    const colors = series.map((s, i) => PALETTE[(s.color === undefined ? i : s.color) % PALETTE.length]);
    const svg = node("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, role: "img", "aria-label": figure.dataset.yLabel });
    const s = scales(series, figure.dataset.xKind, width);
    axes(svg, s, figure.dataset.xLabel, figure.dataset.yLabel);
    series.forEach((one, i) => line(svg, s, one, colors[i]));
    figure.appendChild(svg);
    legend(figure, series, colors);
  }

  window.drawCharts = function (root) {
    root.querySelectorAll("figure.chart").forEach(draw);
  };
  document.addEventListener("DOMContentLoaded", () => window.drawCharts(document));
})();
