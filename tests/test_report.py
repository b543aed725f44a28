"""Figures show the numbers they are given; the HTML report is one self-contained file."""

import numpy as np

from spatial_interp.report import layer_curves, region_heatmap, strip_maps, write_report
from spatial_interp.report.html import Section
from spatial_interp.results import LabelledArray


def sweep_like():
    rng = np.random.default_rng(0)
    values = rng.random((3, 4, 2, 5))  # metric, site, region, pair
    coords = {"metric": ["c0", "c1", "c2"], "site": [f"lm_resid.{s}" for s in range(4)],
              "region": ["object", "strip"], "pair": list(range(5))}
    return LabelledArray(values, ("metric", "site", "region", "pair"), coords)


def test_layer_curves_plot_mean_over_pairs_with_paper_ticks():
    sweep = sweep_like()
    fig = layer_curves(sweep, region="strip")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["c0", "c1", "c2"]
    assert list(lines[0].x) == ["Embed", "L0", "L1", "L2"]
    np.testing.assert_allclose(lines[2].y, sweep.values[2, :, 1, :].mean(-1))


def test_strip_maps_and_region_heatmap():
    maps = LabelledArray(np.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4), ("class", "row", "col"),
                         {"class": ["left", "middle", "right"]})
    fig = strip_maps(maps)
    assert len(fig.data) == 3 and fig.data[0].zmin == 0 and fig.data[0].zmax == 1
    np.testing.assert_allclose(np.asarray(fig.data[1].z), maps.values[1])
    heat = region_heatmap(sweep_like(), metric="c1")
    np.testing.assert_allclose(np.asarray(heat.data[0].z), sweep_like().values[1].mean(-1).T)


def test_report_is_self_contained(tmp_path):
    path = write_report([Section("Strips", "text <b>", [layer_curves(sweep_like())], table=[["a", "b"], ["1", "2"]])],
                        tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    assert "<h2>Strips</h2>" in text and "text &lt;b&gt;" in text and "<td>1</td>" in text
    assert "<script src=" not in text and "plotly.js v" in text  # plotly.js inlined, no CDN
