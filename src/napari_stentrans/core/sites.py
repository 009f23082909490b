"""The sites of an enhanced slide: measured, imputed and new half-pitch sites.

Output coordinates are **half-pitch lattice coordinates**: the enhanced lattice is the input
lattice with every array coordinate doubled, so measured spot ``(r, c)`` is at ``(2r, 2c)`` and
the new sites sit between measured ones (hex: ``(2r, 2c+2)``, ``(2r+1, 2c-1)``, ``(2r+1, 2c+1)``
are the midpoints to the neighbours ``(r, c+2)``, ``(r+1, c-1)``, ``(r+1, c+1)``). A site's
``kind`` says whether it was measured, imputed (user-declared lost, marked in tissue without
counts, or enclosed holes) or new (half-pitch sites midway between two known lattice sites: both
ends of an edge, or a diagonal of a square cell; so never outside the tissue edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .lattice import CHILD_OFFSETS, child_between
from .slide import Slide, site_keys

KINDS = ("measured", "imputed", "new")


@dataclass
class OutputSites:
    """The sites of the enhanced slide, each ``(n_sites,)``.

    ``row``/``col`` are half-pitch coordinates, ``fine_row``/``fine_col`` the fine site that owns
    each (its parent in the pixel shuffle), ``child`` the child index 0..3, ``kind`` one of
    :data:`KINDS` and ``spot`` the index of the measured spot a site is (-1 if none).
    """

    row: np.ndarray
    col: np.ndarray
    fine_row: np.ndarray
    fine_col: np.ndarray
    child: np.ndarray
    kind: np.ndarray
    spot: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def positions(self, slide: Slide) -> np.ndarray:
        """Physical positions ``(n_sites, 2)`` in units of the slide's pitch."""
        return slide.lattice.physical(self.row, self.col, scale=2.0) / slide.lattice.pitch_um

    @property
    def on_input_lattice(self) -> bool:
        """Whether every site is a site of the input lattice itself (child 0, e.g. lost spots)."""
        return bool((self.child == 0).all())


def _measured_spot(slide: Slide, fine_row: np.ndarray, fine_col: np.ndarray, child: np.ndarray) -> np.ndarray:
    """Index of the measured spot each child-0 site is, -1 for every other site."""
    lookup = pd.Series(np.arange(len(slide.row)), index=site_keys(slide.row, slide.col))
    spot = lookup.reindex(site_keys(fine_row, fine_col)).to_numpy()
    return np.where(child == 0, np.nan_to_num(spot, nan=-1), -1).astype(np.int64)


def output_sites(slide: Slide) -> OutputSites:
    """Measured, imputed and new half-pitch sites of a slide (see module docstring).

    Computed once per slide (cached on it: its spots, lost sites and ``fill_holes`` are fixed),
    so the CLI's size estimate and the writer share one computation.
    """
    cached = slide._cache.get("output_sites")
    if cached is not None:
        return cached
    lattice = slide.lattice
    raster = slide.index_raster(pad=2)
    measured_img, imputed_img = slide.site_images(raster)
    between = child_between(lattice, measured_img | imputed_img)
    fine_r, fine_c = raster.sites()
    kind_img = np.full((4,) + raster.shape, -1, dtype=np.int8)
    kind_img[0][measured_img] = 0
    kind_img[0][imputed_img] = 1
    kind_img[1:][between[1:]] = 2
    k, p, q = np.nonzero(kind_img >= 0)
    fr, fc = fine_r[p, q], fine_c[p, q]
    dr, dc = lattice.from_index(CHILD_OFFSETS[k, 0], CHILD_OFFSETS[k, 1])
    spot = _measured_spot(slide, fr, fc, k)
    kinds = np.asarray(KINDS)[kind_img[k, p, q]]
    order = np.lexsort((2 * fc + dc, 2 * fr + dr, kind_img[k, p, q]))
    sites = OutputSites(
        row=(2 * fr + dr)[order],
        col=(2 * fc + dc)[order],
        fine_row=fr[order],
        fine_col=fc[order],
        child=k[order],
        kind=kinds[order],
        spot=spot[order],
    )
    slide._cache["output_sites"] = sites
    return sites


def with_input_spots(sites: OutputSites, slide: Slide) -> OutputSites:
    """``sites`` followed by the slide's usable spots it leaves out, as measured sites (child 0).

    A model that reads its base estimate at the input spots (the correction network's third
    channel) needs the base there whichever sites are asked for: evaluation asks for held-out
    sites only.
    """
    usable = np.flatnonzero(slide.usable)
    missing = usable[~np.isin(usable, sites.spot[sites.child == 0])]
    if not len(missing):
        return sites
    spots = sites_at(slide, 2 * slide.row[missing], 2 * slide.col[missing], kind="measured")
    return OutputSites(
        *(np.concatenate([getattr(sites, f), getattr(spots, f)]) for f in OutputSites.__dataclass_fields__)
    )


def sites_at(slide: Slide, rows: np.ndarray, cols: np.ndarray, kind: str = "new") -> OutputSites:
    """Output sites at given half-pitch coordinates (e.g. held-out spots for evaluation).

    Each half-pitch site is child ``(du, dv)`` of the fine site ``(u // 2, v // 2)`` of its
    index coordinates ``(u, v)`` in the (same-type) half-pitch lattice.
    """
    u, v = slide.lattice.to_index(rows, cols)
    fine_row, fine_col = slide.lattice.from_index(u // 2, v // 2)
    child = 2 * (u % 2) + (v % 2)
    spot = _measured_spot(slide, fine_row, fine_col, child)
    return OutputSites(
        row=np.asarray(rows, np.int64),
        col=np.asarray(cols, np.int64),
        fine_row=fine_row,
        fine_col=fine_col,
        child=child,
        kind=np.full(len(u), kind),
        spot=spot,
    )


__all__ = ["OutputSites", "output_sites", "sites_at", "with_input_spots", "KINDS"]
