// envcache dashboard: draws the charts from the JSON the page embeds, follows a running build's
// log, and copies pull commands. Every page reads without it.
"use strict";

(function () {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // -- charts (uPlot) ---------------------------------------------------------------------------
  function drawChart(el) {
    const data = JSON.parse(document.getElementById(el.dataset.series).textContent);
    const grid = { stroke: css("--border"), width: 1 };
    const axis = { stroke: css("--muted"), grid: grid, ticks: grid };
    const smooth = uPlot.paths.spline();
    // Dots mark the buckets where something happened, so a lone burst never hides in a flat line.
    const nonZero = (u, i) => u.data[i].flatMap((v, j) => (v > 0 ? [j] : []));
    const series = [{}].concat(data.series.map((s, i) => ({
      label: s.label,
      stroke: css("--c-" + s.name),
      fill: i === 0 ? css("--c-" + s.name) + "26" : undefined,
      width: i === 0 ? 2.25 : 1.75,
      paths: smooth,
      points: { show: true, size: 6, filter: nonZero },
      value: (u, v) => (v == null ? "—" : v.toLocaleString()),
    })));
    const opts = {
      width: el.clientWidth,
      height: 260,
      series: series,
      scales: { y: { range: (u, min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] } },
      axes: [axis, Object.assign({ size: 44, values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? t : "")) }, axis)],
      cursor: { points: { show: false } },
      legend: { live: true },
    };
    const plot = new uPlot(opts, [data.times, ...data.series.map((s) => s.values)], el);
    window.addEventListener("resize", () => plot.setSize({ width: el.clientWidth, height: 260 }));
  }
  if (window.uPlot) document.querySelectorAll(".chart[data-series]").forEach(drawChart);

  // -- a running build's log ------------------------------------------------------------------------
  const log = document.getElementById("log");
  if (log && log.dataset.live === "true") follow(log);

  async function follow(log) {
    let skip = Number(log.dataset.lines);   // lines the page already shows
    const status = document.getElementById("log-status");
    let shown = skip;
    try {
      const response = await fetch("/api/v1/builds/" + encodeURIComponent(log.dataset.build) + "/log",
                                   { credentials: "same-origin" });
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const parts = (pending + value).split("\n");
        pending = parts.pop();
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
        for (const text of parts) {
          if (skip > 0) { skip--; continue; }
          const line = document.createElement("span");
          line.className = "line fresh";
          line.textContent = text;
          log.appendChild(line);
          shown++;
        }
        if (atBottom) log.scrollTop = log.scrollHeight;
        log.dataset.lines = String(shown);
      }
      // The build ended: the server renders its final state (outcome, the failing line).
      status.textContent = "finished — loading the result…";
      location.reload();
    } catch (err) {
      status.textContent = "stopped following (" + err.message + ") — reload to resume";
    }
  }

  // -- copy buttons -----------------------------------------------------------------------------------
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (err) {
        const target = button.previousElementSibling;
        window.getSelection().selectAllChildren(target);
        button.textContent = "Press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1600);
    });
  });

  // A failed build's page opens at the line that failed.
  const failing = document.getElementById("failing");
  if (failing && log && !location.hash) log.scrollTop = failing.offsetTop - log.clientHeight / 3;
})();
