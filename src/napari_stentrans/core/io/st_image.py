"""The H&E image of a legacy ST section, found beside its counts table.

STUtility (Bergenstråhle et al. 2020, BMC Genomics 21:482) keeps a section as
``{sample}.tsv`` (counts), ``alignment_table_{sample}.tsv`` (spot ``x, y``, their adjusted
``new_x, new_y``, ``pixel_x, pixel_y`` in the H&E image and ``selected``) and ``{sample}.jpg``;
the ST pipeline's ``{sample}_selection.tsv`` has the same columns. When the coordinates give
pixel positions and an image of the sample's name lies beside the counts, it becomes the slide's
``hires`` image, so napari shows the tissue under the spots as it does for Visium.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from .common import READ_FAULTS, OptionalPartWarning

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: the longest side of the kept image, in pixels (Space Ranger's hires image is 2,000)
MAX_SIDE = 2000
#: share of the image size the spots' pixel positions may overshoot it by
MARGIN = 0.02


def sample_names(counts_path: Path, coords_path: Path | None) -> list[str]:
    """The section's names by the counts' and coordinates' file names (``MOB1`` for
    ``MOB1_counts.tsv.gz`` and ``alignment_table_MOB1.tsv``), most specific first."""
    names = []
    stem = counts_path.name.split(".")[0]
    names.append(re.sub(r"(_?counts?|_?cnts?|_?stdata)$", "", stem, flags=re.IGNORECASE))
    if coords_path is not None:
        stem = coords_path.name.split(".")[0]
        stem = re.sub(r"^alignment_table_", "", stem)
        names.append(re.sub(r"_(selection|coords|coordinates|coor|positions)$", "", stem))
    return [name for name in dict.fromkeys(names) if name]


def find_image(counts_path: Path, coords_path: Path | None) -> Path | None:
    """An image named like the section beside its counts table (case-insensitive suffix), or None."""
    folder = counts_path.parent
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for name in sample_names(counts_path, coords_path):
        for suffix in IMAGE_SUFFIXES:
            hit = by_name.get(f"{name}{suffix}".lower())
            if hit is not None:
                return hit
    return None


def attach_image(adata: ad.AnnData, counts_path: Path, coords_path: Path | None) -> str | None:
    """Put the section's H&E image in ``adata.uns["spatial"]`` when one lies beside the counts.

    ``obsm["spatial"]`` must hold the spots' ``pixel_x, pixel_y`` in that image (full
    resolution). The image is kept as ``hires``, scaled so its longest side is at most
    :data:`MAX_SIDE` pixels, with ``tissue_hires_scalef`` its scale and ``spot_diameter_fullres``
    the spot diameter in its pixels (by the lattice: half the pitch on legacy ST arrays, as
    scanpy's ``pl.spatial`` needs it); the library is named by the sample. The slide's lattice
    must be set (:func:`~.common.set_lattice`).

    Returns
    -------
    A note for ``info`` (``"H&E: MOB1.jpg (1905 x 1905 px)"``), or None without an image.
    An image that cannot be decoded, or whose size does not contain the spots' pixel positions
    (another image, or positions at another scale), is left out with an
    :class:`~.common.OptionalPartWarning`; the slide is read either way.
    """
    path = find_image(counts_path, coords_path)
    if path is None:
        return None
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # whole-slide scans are large
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    width, height = im.size
                    scale = min(1.0, MAX_SIDE / max(width, height))
                    if scale < 1.0:
                        # a JPEG decodes at a power-of-two reduction first: a whole-slide scan
                        # is never held at full size
                        im.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
                        im = im.convert("RGB").resize(
                            (max(1, round(width * scale)), max(1, round(height * scale))),
                            Image.Resampling.LANCZOS,
                        )
                    image = np.asarray(im.convert("RGB"))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (*READ_FAULTS, Image.UnidentifiedImageError) as exc:
        _omit(f"{path}: cannot be decoded ({type(exc).__name__}: {exc}); the H&E image is left out")
        return None
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    low, high = xy.min(axis=0), xy.max(axis=0)
    slack = MARGIN * np.array([width, height])
    if (low < -slack).any() or (high > np.array([width, height]) + slack).any():
        _omit(
            f"{path}: {width} x {height} pixels, but the spots' pixel_x, pixel_y reach "
            f"{high[0]:.0f}, {high[1]:.0f}{' (and below 0)' if (low < -slack).any() else ''}: not the "
            "image (or not the scale) they were measured on; the H&E image is left out"
        )
        return None
    from ..display import DisplayFrame, lattice_spot_diameter_um

    sample = sample_names(counts_path, coords_path)[0]
    scalefactors = {"tissue_hires_scalef": image.shape[1] / width}
    frame = DisplayFrame.of(adata)
    if frame.um_per_pixel > 0:  # scanpy.pl.spatial sizes its spots by this
        scalefactors["spot_diameter_fullres"] = lattice_spot_diameter_um(frame.lattice) / frame.um_per_pixel
    adata.uns["spatial"] = {
        sample: {
            "images": {"hires": image},
            "scalefactors": scalefactors,
            "metadata": {"source_image_path": str(path)},
        }
    }
    return f"H&E: {path.name} ({width} x {height} px)"


def _omit(message: str) -> None:
    warnings.warn(message, OptionalPartWarning, stacklevel=3)


__all__ = ["attach_image", "find_image", "sample_names"]
