"""Figures show the numbers they are given; the HTML report is one self-contained file."""

import numpy as np

from spatial_interp.report import layer_curves, region_heatmap, strip_maps, write_report
from spatial_interp.report.html import Section
from spatial_interp.results import LabelledArray


def sweep_like():
    rng = np.random.default_rng(0)
    values = rng.random((3, 4, 2, 5))  # metric, site, region, pair
    coords = {"metric": ["clean answer", "middle", "cf answer"], "site": [f"lm_resid.{s}" for s in range(4)],
              "region": ["object", "strip"], "pair": list(range(5))}
    return LabelledArray(values, ("metric", "site", "region", "pair"), coords)


def test_layer_curves_plot_mean_over_pairs_with_paper_ticks():
    sweep = sweep_like()
    fig = layer_curves(sweep, region="strip")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["clean answer", "middle", "cf answer"]
    assert list(lines[0].x) == ["Embed", "L0", "L1", "L2"]
    np.testing.assert_allclose(lines[2].y, sweep.values[2, :, 1, :].mean(-1))


def test_layer_curve_bands_are_clipped_95_percent_bootstrap_intervals():
    values = np.zeros((1, 2, 40))
    values[0, 0, :2] = 1.0  # slot 0: mean 0.05, a resampled interval that a ±std band would push below 0
    values[0, 1] = np.r_[np.ones(20), np.zeros(20)]
    sweep = LabelledArray(values, ("metric", "site", "pair"), {"metric": ["cf answer"], "site": ["lm_resid.0",
                                                                                                  "lm_resid.1"]})
    fig = layer_curves(sweep)
    band = next(t for t in fig.data if t.fill == "toself")
    high, low = np.asarray(band.y[:2]), np.asarray(band.y[2:][::-1])
    assert (low >= 0).all() and (high <= 1).all() and low[0] == 0.0  # clipped at 0, not -0.17 as ±1 std gives
    # Independent reference: the percentile bootstrap of the mean by hand (same seed, same resamples).
    picks = np.random.default_rng(0).integers(0, 40, size=(2000, 40))
    means = values[0, 1][picks].mean(-1)
    np.testing.assert_allclose([low[1], high[1]], np.quantile(means, [0.025, 0.975]))
    assert 0.3 < low[1] < 0.5 < high[1] < 0.7
    assert "n = 40 pairs" in fig.layout.title.text and "95 % bootstrap" in fig.layout.title.text
    assert fig.layout.width <= 800 and fig.layout.yaxis.title.text and fig.layout.xaxis.title.text


def test_strip_maps_and_region_heatmap():
    maps = LabelledArray(np.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4), ("class", "row", "col"),
                         {"class": ["left", "middle", "right"]})
    fig = strip_maps(maps)
    assert len(fig.data) == 3 and fig.data[0].zmin == 0 and fig.data[0].zmax == 1
    np.testing.assert_allclose(np.asarray(fig.data[1].z), maps.values[1])
    from PIL import Image

    with_image = strip_maps(maps, image=Image.new("RGB", (336, 336), "red"), caption="n = 3 images")
    assert with_image.data[0].type == "image" and len(with_image.data) == 4
    assert with_image.layout.width <= 800 and "n = 3 images" in with_image.layout.title.text
    assert with_image.data[-1].colorbar.title.text == "P(class)"
    heat = region_heatmap(sweep_like(), metric="middle")
    np.testing.assert_allclose(np.asarray(heat.data[0].z), sweep_like().values[1].mean(-1).T)


def test_report_is_self_contained(tmp_path):
    path = write_report([Section("Strips", "text <b>", [layer_curves(sweep_like())], table=[["a", "b"], ["1", "2"]])],
                        tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    assert "<h2>Strips</h2>" in text and "text &lt;b&gt;" in text and "<td>1</td>" in text
    assert "<script src=" not in text and "plotly.js v" in text  # plotly.js inlined, no CDN


def test_report_figures_carry_the_report_template_and_their_data(tmp_path):
    import json
    import re

    import plotly.io as pio

    from spatial_interp.report.html import REPORT_TEMPLATE

    assert REPORT_TEMPLATE == "plotly_white"
    fig = layer_curves(sweep_like())
    path = write_report([Section("Curves", "", [fig])], tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    # The figure's JSON as plotly.js receives it: Plotly.newPlot(id, data, layout, config).
    call = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"responsive"', text, re.S)
    assert call is not None
    data, layout = json.loads(call.group(1)), json.loads(call.group(2))
    white = pio.templates[REPORT_TEMPLATE].layout
    assert layout["template"]["layout"]["plot_bgcolor"] == white.plot_bgcolor == "white"
    assert fig.layout.template.layout.plot_bgcolor != "white"  # the figure itself keeps the default template
    assert layout["width"] == fig.layout.width and layout["title"]["text"] == fig.layout.title.text
    assert [trace.get("name") for trace in data] == [trace.name for trace in fig.data]
    assert [trace["x"] for trace in data] == [list(trace.x) for trace in fig.data]
