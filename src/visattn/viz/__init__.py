"""Visualise attention: capture hooks, Grad-CAM, figures and the HTML report.

- :func:`capture` / :class:`AttentionRecorder`: raw SE gates, CBAM maps, STN theta and grids.
- :func:`grad_cam`: Grad-CAM maps (arXiv:1610.02391).
- :func:`plot_attention_summary`: one figure for any mechanism (its maps reduced to positions or
  channel gates: :func:`position_maps`, :func:`channel_gates`).
- ``plot_*``: matplotlib figures written as PNG files.
- :func:`write_report`: a self-contained ``report.html`` over those figures.

Tests: ``tests/viz/``.
"""

from . import figures as _figures
from .capture import AttentionMaps, AttentionRecorder, attention_layers, capture
from .figures import *  # noqa: F403  (the plot_* functions: figures.__all__)
from .gradcam import find_target_layer, grad_cam
from .mechanisms import channel_gates, plot_attention_summary, position_maps
from .report import Figure, write_report

__all__ = [
    "AttentionMaps",
    "AttentionRecorder",
    "Figure",
    "attention_layers",
    "capture",
    "channel_gates",
    "find_target_layer",
    "grad_cam",
    "plot_attention_summary",
    "position_maps",
    "write_report",
    *_figures.__all__,
]
