// metalr report: draws every <div data-chart="KEY"> from the JSON in #report-data with uPlot.
// Drag to zoom (x, or a box), double-click to reset, click a legend entry to hide a series.
// A series with "band" ("lo" / "hi") is an edge of the spread band of the series before it,
// filled and kept out of the legend; "points_only" draws dots (a sweep's points per seed).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"];
  var dashes = [null, [6, 3], [2, 2], [8, 3, 2, 3]];
  var drawn = [];

  function hasData(spec) {
    return spec.x.length > 0 && spec.series.some(function (s) {
      return s.y.some(function (v) { return v !== null; });
    });
  }

  function colourOf(spec, s, groups) {
    return palette[(s.colour === undefined ? groups.indexOf(s.group) : s.colour) %
      palette.length];
  }

  function seriesOpts(spec) {
    var groups = [], seen = {};
    return spec.series.map(function (s) {
      if (!(s.group in seen)) { seen[s.group] = 0; groups.push(s.group); }
      var colour = colourOf(spec, s, groups);
      if (s.band) {
        return { label: s.label, stroke: "transparent", width: 0, spanGaps: true,
          points: { show: false } };
      }
      if (s.points_only) {
        return { label: s.label, stroke: colour, fill: colour, width: 0,
          paths: function () { return null; }, points: { show: true, size: 7, fill: colour } };
      }
      var dash = dashes[seen[s.group]++ % dashes.length];
      var opts = { label: s.label, stroke: colour, width: 1.5, spanGaps: true,
        points: { show: spec.x.length < 40 } };
      if (dash) { opts.dash = dash; }
      if (spec.stepped) { opts.paths = uPlot.paths.stepped({ align: 1 }); opts.points = { show: false }; }
      return opts;
    });
  }

  function bands(spec) {
    var groups = [], out = [];
    spec.series.forEach(function (s, i) {
      if (groups.indexOf(s.group) < 0) { groups.push(s.group); }
      if (s.band === "hi") {  // uPlot's series index: 0 is x, so series i is i + 1
        out.push({ series: [i + 1, i], fill: colourOf(spec, s, groups) + "33" });
      }
    });
    return out;
  }

  function draw(el) {
    var spec = data[el.getAttribute("data-chart")];
    if (!spec) { return; }
    if (!hasData(spec)) {
      el.textContent = spec.title + ": no data";
      el.classList.add("empty");
      return;
    }
    var height = el.classList.contains("small") ? 180 : 300;
    var opts = {
      title: spec.title, width: Math.max(el.clientWidth, 280), height: height,
      scales: { x: spec.xlog ? { time: false, distr: 3 } : { time: false },
        y: spec.log ? { distr: 3 } : {} },
      axes: [{ label: spec.xlabel }, { size: 60 }],
      bands: bands(spec),
      series: [{ label: spec.xlabel }].concat(seriesOpts(spec)),
      cursor: { drag: { x: true, y: true, uni: 30 } },
      legend: { live: true }
    };
    if (spec.stepped) { opts.scales.y = { range: [0, 1.02] }; }
    if (spec.xticks) {  // a swept value that is no number: its name at each position
      opts.axes[0].values = function (u, splits) {
        return splits.map(function (v) {
          return v === Math.round(v) && spec.xticks[v] !== undefined ? spec.xticks[v] : "";
        });
      };
      opts.scales.x.range = [-0.5, spec.xticks.length - 0.5];
    }
    var rows = [spec.x].concat(spec.series.map(function (s) { return s.y; }));
    var plot = new uPlot(opts, rows, el);
    var legend = el.querySelectorAll(".u-legend .u-series");
    spec.series.forEach(function (s, i) {  // a band's edges stay out of the legend
      if (s.band && legend[i + 1]) { legend[i + 1].style.display = "none"; }
    });
    el.setAttribute("data-series", String(spec.series.filter(function (s) {
      return !s.band;
    }).length));
    el.setAttribute("data-bands", String(opts.bands.length));
    drawn.push({ key: el.getAttribute("data-chart"), el: el, plot: plot, height: height });
  }

  var nodes = document.querySelectorAll("[data-chart]");
  for (var i = 0; i < nodes.length; i++) { draw(nodes[i]); }
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      drawn.forEach(function (d) {
        d.plot.setSize({ width: Math.max(d.el.clientWidth, 280), height: d.height });
      });
    }, 100);
  });
  window.metalrReport = { charts: drawn };  // for the browser test and the curious console
  document.body.setAttribute("data-charts-drawn", String(drawn.length));
})();
