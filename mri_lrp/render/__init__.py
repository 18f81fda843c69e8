"""Pictures of relevance: overlay PNGs of the scan in grey with signed relevance on top.

``view`` holds the display convention (closest RAS axes, neurological view, the planes and their side letters),
``colour`` the grey window and relevance colours, ``text`` the header strip and labels, ``png`` the file
writer; ``overlay`` composes one scan's picture, ``channels`` a multi-channel case's sequences side by side, and
``folds`` the fold ensemble's row under an overlay.
"""

from mri_lrp.render.channels import CHANNEL_LABEL_PX, compose_channels, render_channels
from mri_lrp.render.colour import BACKGROUND, CMAP_NAME, CONTOUR, STAMP_COLOUR
from mri_lrp.render.overlay import (
    GAP_PX,
    MIN_WIDTH_PX,
    MOSAIC_COLUMNS,
    MOSAIC_SLICES,
    STAMP_FRAME_PX,
    Overlay,
    compose_overlay,
    render_overlay,
)
from mri_lrp.render.png import png_bytes, write_png
from mri_lrp.render.text import HEADER_PX
from mri_lrp.render.view import PANEL_PX, Panel

__all__ = [
    "BACKGROUND", "CHANNEL_LABEL_PX", "CMAP_NAME", "CONTOUR", "GAP_PX", "HEADER_PX", "MIN_WIDTH_PX",
    "MOSAIC_COLUMNS", "MOSAIC_SLICES", "PANEL_PX", "STAMP_COLOUR", "STAMP_FRAME_PX", "Overlay", "Panel",
    "compose_channels", "compose_overlay", "png_bytes", "render_channels", "render_overlay", "write_png",
]
