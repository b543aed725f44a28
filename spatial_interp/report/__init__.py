"""Interactive plotly figures of results and a self-contained HTML report."""

from .figures import layer_curves, region_heatmap, strip_maps
from .html import write_report

__all__ = ["layer_curves", "region_heatmap", "strip_maps", "write_report"]
