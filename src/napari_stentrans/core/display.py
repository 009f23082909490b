"""Display geometry: spot lattices as images placed exactly over the H&E (no napari import).

World coordinates are micrometres in the frame of the slide image: world ``(y, x) = s *
(image row, image column)`` with ``s`` the micrometres per full-resolution image pixel, so an
H&E image and every gene layer share one frame. Without an image, ``obsm["spatial"]`` defines
the frame (array units for legacy ST tables).

Gene images use the lattice's own geometry, never the distorted brick: square lattices get one
pixel per spot; hex (Visium) and checkerboard (ST 2k) lattices a doubled-column raster in which
spot ``(r, c)`` spans pixels ``(r, c)`` and ``(r, c + 1)`` (``r + c`` is even, so odd rows shift by
one pixel), which puts every spot centre where it is in reality. Enhanced (half-pitch) layers use
the same construction at half the pitch, so each measured spot's enhanced pixel pair is centred
on the original spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .lattice import Lattice, fit_affine

if TYPE_CHECKING:  # anndata (with pandas) takes about a second to import: not when napari builds the panel
    import anndata as ad

    from .slide import Slide

_NEIGHBOUR = {"square": (0, 1), "hex": (0, 2), "checkerboard": (1, 1)}
# spot diameter / centre-to-centre pitch when the slide does not say (Visium: 55 of 100 um; ST: 100
# of 200 um)
DIAMETER_OF_PITCH = {"hex": 0.55, "square": 0.5}


def lattice_spot_diameter_um(lattice: Lattice) -> float:
    """The spots' diameter in micrometres by the lattice alone: 55 % of the pitch on a hex lattice
    (Visium: 55 of 100 um), half the pitch otherwise (legacy ST: 100 of 200 um)."""
    return DIAMETER_OF_PITCH.get(lattice.kind, 0.5) * lattice.pitch_um


@dataclass(frozen=True)
class DisplayFrame:
    """Maps array coordinates of a slide to world coordinates (micrometres, image frame).

    Attributes
    ----------
    array_to_world
        ``3 x 3`` affine: ``(y, x, 1) = array_to_world @ (row, col, 1)``.
    um_per_pixel
        Micrometres per full-resolution image pixel (``obsm["spatial"]`` unit).
    """

    lattice: Lattice
    array_to_world: np.ndarray
    um_per_pixel: float

    @classmethod
    def of(cls, adata: ad.AnnData) -> DisplayFrame:
        """Fit the array -> image affine on the measured spots and scale it to micrometres."""
        from .io import lattice_of

        lattice = lattice_of(adata)
        row = adata.obs["array_row"].to_numpy(dtype=float)
        col = adata.obs["array_col"].to_numpy(dtype=float)
        coef = None
        if "spatial" in adata.obsm:
            fit = fit_affine(row, col, np.asarray(adata.obsm["spatial"], float)[:, ::-1])  # -> (y, x)
            coef = None if fit is None else fit.T
        if coef is None:  # no usable image frame: physical positions are the frame
            phys = lattice.physical(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]))
            coef = np.array(
                [
                    [phys[1, 1] - phys[0, 1], phys[2, 1] - phys[0, 1], 0.0],
                    [phys[1, 0] - phys[0, 0], phys[2, 0] - phys[0, 0], 0.0],
                ]
            )
            return cls(lattice, np.vstack([coef, [0, 0, 1]]), 1.0)
        step = np.asarray(_NEIGHBOUR[lattice.kind], float)
        pixels_per_pitch = float(np.linalg.norm(coef[:, :2] @ step))
        um = lattice.pitch_um / pixels_per_pitch
        return cls(lattice, np.vstack([coef * um, [0, 0, 1]]), um)

    def world(self, row: np.ndarray, col: np.ndarray, half_pitch: bool = False) -> np.ndarray:
        """World ``(n, 2)`` (y, x) of array (or half-pitch, with ``half_pitch``) coordinates."""
        scale = 0.5 if half_pitch else 1.0
        rc1 = np.column_stack(
            [np.asarray(row, float) * scale, np.asarray(col, float) * scale, np.ones(len(row))]
        )
        return (rc1 @ self.array_to_world.T)[:, :2]

    def image_affine(self, scalef: float) -> np.ndarray:
        """``3 x 3`` affine placing an image at ``scalef`` of full resolution in the world."""
        s = self.um_per_pixel / scalef
        return np.array([[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SpotRaster:
    """Gene images of a set of lattice sites with the affine that places them in the world.

    ``images`` is ``(n_genes, height, width)``; ``mask`` marks pixels covered by a site;
    ``affine`` maps pixel ``(p, q, 1)`` to world ``(y, x, 1)``; ``pixel_of`` gives each site's first
    pixel.
    """

    images: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    pixel_of: tuple[np.ndarray, np.ndarray]
    doubled: bool
    origin: tuple[int, int] = (0, 0)

    def sites_of_pixels(self, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lattice sites ``(rows, cols)`` touched by painted pixels of this raster's shape.

        Every pixel belongs to exactly one lattice site (on doubled rasters site ``(r, c)`` owns
        pixels ``c`` and ``c + 1`` of row ``r``), whether or not the site was measured.
        """
        p, q = np.nonzero(painted)
        rows = p + self.origin[0]
        cols = q + self.origin[1]
        if self.doubled:
            cols = np.where((rows + cols) % 2 == 0, cols, cols - 1)
        sites = np.unique(np.column_stack([rows, cols]), axis=0) if len(rows) else np.zeros((0, 2), np.int64)
        return sites[:, 0], sites[:, 1]

    def pixels_of_sites(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Boolean image of this raster's shape covering the given sites."""
        out = np.zeros(self.mask.shape, dtype=bool)
        p = np.asarray(rows, np.int64) - self.origin[0]
        q = np.asarray(cols, np.int64) - self.origin[1]
        inside = (p >= 0) & (p < out.shape[0]) & (q >= 0) & (q < out.shape[1] - (1 if self.doubled else 0))
        out[p[inside], q[inside]] = True
        if self.doubled:
            out[p[inside], q[inside] + 1] = True
        return out


def spot_raster(
    frame: DisplayFrame,
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    half_pitch: bool = False,
    pad: int = 1,
    background: float = 0.0,
) -> SpotRaster:
    """Rasterise per-site values ``(n_sites, n_genes)`` with the lattice's real geometry.

    Parameters
    ----------
    frame
        The slide's display frame.
    rows, cols
        Array coordinates of the sites (half-pitch coordinates when ``half_pitch``).
    values
        Values per site and gene.
    half_pitch
        The sites are on the 2x lattice of an enhanced slide.
    background
        The value of pixels without a site (NaN: napari draws them transparent).
    """
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    values = np.asarray(values, dtype=np.float32)
    doubled = frame.lattice.kind != "square"
    r0 = int(rows.min()) - pad
    c0 = int(cols.min()) - pad
    height = int(rows.max()) - r0 + 1 + pad
    width = int(cols.max()) - c0 + 1 + pad + (1 if doubled else 0)
    p, q = rows - r0, cols - c0
    images = np.full((values.shape[1], height, width), background, dtype=np.float32)
    mask = np.zeros((height, width), dtype=bool)
    images[:, p, q] = values.T
    mask[p, q] = True
    if doubled:
        images[:, p, q + 1] = values.T
        mask[p, q + 1] = True
    # pixel (p, q) -> array (p + r0, q + c0 - 1/2 for doubled rasters), halved on the 2x lattice
    scale = 0.5 if half_pitch else 1.0
    pixel_to_array = np.array(
        [[scale, 0, scale * r0], [0, scale, scale * (c0 - (0.5 if doubled else 0.0))], [0, 0, 1]]
    )
    return SpotRaster(images, mask, frame.array_to_world @ pixel_to_array, (p, q), doubled, (r0, c0))


def spatially_variable_genes(adata: ad.AnnData | Slide, n: int = 4, candidates: int = 2000) -> list[str]:
    """The ``n`` genes with the highest variance after smoothing over lattice neighbours.

    Smoothing over one pitch keeps spatial structure and averages out spot noise, so its
    variance ranks genes by spatially coherent variation (not by noise or by depth). ``adata``
    may be the slide already built from it (``stentrans info`` has one).
    """
    from .classical import kernel_weights
    from .slide import Slide

    slide = adata if isinstance(adata, Slide) else Slide.from_adata(adata)
    eligible = slide.eligible_genes(0.10)
    if len(eligible) == 0:
        eligible = np.arange(len(slide.genes))
    pool = slide.most_variable(eligible, candidates)
    values = slide.expression(pool, "log1p")
    xy = slide.positions(slide.usable)
    smoothed = kernel_weights(xy, xy, 1.0) @ values
    order = np.argsort(-smoothed.var(axis=0), kind="stable")[:n]
    return [str(slide.genes[pool[i]]) for i in order]
