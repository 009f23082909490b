"""npe2 writer: the enhanced slide (and the painted lost regions) to .h5ad via the core."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_enhanced(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the enhanced AnnData behind the selected ``GENE x2`` layers to ``path``.

    A selected lost-regions Labels layer adds the painted sites as ``uns["stentrans"]["lost_sites"]``.
    The write is atomic and never replaces the slide the enhancement was made from, nor the
    enhanced file the layers were opened from. The file reads back with ``napari_stentrans.read``
    and opens again in napari as an enhanced slide.
    """
    from ..core.files import write_h5ad
    from ..core.io import source_of

    target = Path(path)
    if target.suffix.lower() != ".h5ad":
        raise ValueError(f"{target}: the enhanced slide is written as .h5ad")
    enhanced, lost = None, None
    for data, attrs, _layer_type in layer_data:
        meta = (attrs.get("metadata") or {}).get("stentrans", {})
        if meta.get("role") == "enhanced":
            enhanced = meta["adata"]
        elif meta.get("role") == "lost" and "raster" in meta:
            rows, cols = meta["raster"].sites_of_pixels(np.asarray(data) > 0)
            lost = np.column_stack([rows, cols])
    if enhanced is None:
        raise ValueError("select an enhanced layer ('GENE x2') to export the enhanced slide")
    # the slide it was made from, and the enhanced file it was read from (when opened from one)
    sources = [enhanced.uns.get("stentrans", {}).get("source")]
    sources.append(source_of(enhanced))
    out = enhanced
    if lost is not None:
        out = enhanced.copy()
        out.uns["stentrans"] = dict(out.uns["stentrans"], lost_sites=lost)
    write_h5ad(out, target, inputs=[s for s in sources if s])
    return [str(target)]
