"""Reports rendered from JSON records: Markdown tables, plots and image grids."""

from medshield.report.grids import adversarial_grid
from medshield.report.plots import heatmap, line_plot
from medshield.report.tables import markdown_table, pivot_table

__all__ = ["adversarial_grid", "heatmap", "line_plot", "markdown_table", "pivot_table"]
