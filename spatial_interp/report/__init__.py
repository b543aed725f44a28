"""Interactive plotly figures of results and a self-contained HTML report."""

from .figures import alpha_curves, layer_curves, region_heatmap, strip_maps
from .html import Section, write_report

__all__ = ["Section", "alpha_curves", "layer_curves", "region_heatmap", "strip_maps", "write_report"]
