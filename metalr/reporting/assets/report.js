// metalr report: draws every <div data-chart="KEY"> from the JSON in #report-data with uPlot.
// Drag to zoom (x, or a box), double-click to reset, click a legend entry to hide a series.
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

  function seriesOpts(spec) {
    var groups = [], seen = {};
    return spec.series.map(function (s) {
      if (!(s.group in seen)) { seen[s.group] = 0; groups.push(s.group); }
      var colour = palette[(s.colour === undefined ? groups.indexOf(s.group) : s.colour) %
        palette.length];
      var dash = dashes[seen[s.group]++ % dashes.length];
      var opts = { label: s.label, stroke: colour, width: 1.5, spanGaps: true,
        points: { show: spec.x.length < 40 } };
      if (dash) { opts.dash = dash; }
      if (spec.stepped) { opts.paths = uPlot.paths.stepped({ align: 1 }); opts.points = { show: false }; }
      return opts;
    });
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
      scales: { x: { time: false }, y: spec.log ? { distr: 3 } : {} },
      axes: [{ label: spec.xlabel }, { size: 60 }],
      series: [{ label: spec.xlabel }].concat(seriesOpts(spec)),
      cursor: { drag: { x: true, y: true, uni: 30 } },
      legend: { live: true }
    };
    if (spec.stepped) { opts.scales.y = { range: [0, 1.02] }; }
    var rows = [spec.x].concat(spec.series.map(function (s) { return s.y; }));
    var plot = new uPlot(opts, rows, el);
    el.setAttribute("data-series", String(spec.series.length));
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
