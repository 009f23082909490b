"""Interpolation baselines: each gene's counts and the spot depth interpolated on physical positions.

``nearest``, ``linear`` and ``cubic`` are scipy's interpolators (``griddata``) over the spot
centres in pitch units (Visium: ``x = array_col / 2``, ``y = array_row * sqrt(3) / 2``;
METHOD.md, honest evaluation); linear and cubic are undefined outside the convex hull of the
measured spots, where the nearest spot's value is taken. Where a square of spots has two
Delaunay triangulations (square lattices), linear and cubic are the mean over both, so the
result does not depend on the order of the spots (:class:`InterpolationPredictor`). They learn nothing: ``fit`` records the
method. Every measured spot that is not lost is a source, empty ones included.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CloughTocher2DInterpolator, LinearNDInterpolator, NearestNDInterpolator
from scipy.spatial import Delaunay

from ..classical import SHEARS, canonical_order, sheared
from ..config import DEFAULT_RUNTIME, Runtime
from ..errors import ConfigError
from ..sites import OutputSites
from ..slide import Slide
from .base import Estimator, FitRequest, FittedModel, Predictor, TrainEvent, instant_fit

METHODS = ("nearest", "linear", "cubic")


@dataclass(eq=False, repr=False)  # FittedModel.__repr__: one short line
class InterpolationModel(FittedModel):
    """An interpolation method (nothing is fitted)."""

    method: str
    lattice_kind: str
    training_genes: list[str] = field(default_factory=list)
    history: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.method

    def describe(self) -> dict:
        return {"preset": self.method, "estimator": f"{self.method} interpolation", "n_training_genes": 0}

    def predictor(
        self, slide: Slide, sites: OutputSites, *, runtime: Runtime = DEFAULT_RUNTIME, classical: str = "auto"
    ) -> InterpolationPredictor:
        return InterpolationPredictor(self.method, slide, sites)


class InterpolationPredictor(Predictor):
    """Two triangulations of the sources, reused for every gene batch (and the depth).

    A square of co-circular spots (every cell of a square lattice) has two Delaunay
    triangulations; Qhull would pick one by input order. The estimate is the mean of the
    interpolants on the two triangulations of the slightly sheared spots, one per diagonal
    (:func:`~..classical.linear_weights`), so it depends on the spots' positions only.
    """

    def __init__(self, method: str, slide: Slide, sites: OutputSites) -> None:
        super().__init__()
        self.method, self.slide = method, slide
        rows = np.flatnonzero(slide.not_lost)
        # sorted by position: ``nearest`` breaks ties between equidistant spots alike in any order
        self.rows = rows[canonical_order(slide.positions(rows))]
        source = slide.positions(self.rows)
        self.targets = sites.positions(slide)
        self.triangulations = (
            [(Delaunay(sheared(source, s)), sheared(self.targets, s)) for s in SHEARS]
            if method != "nearest" and len(source) >= 3
            else []
        )
        self.source = source
        self.depth = np.clip(self._interpolate(slide.depth[self.rows][:, None]), 0, None)[:, 0]

    def _interpolate(self, values: np.ndarray) -> np.ndarray:
        nearest = NearestNDInterpolator(self.source, values)(self.targets)
        if not self.triangulations:
            return nearest
        interpolator = LinearNDInterpolator if self.method == "linear" else CloughTocher2DInterpolator
        pred = np.mean([interpolator(tri, values)(targets) for tri, targets in self.triangulations], axis=0)
        return np.where(np.isnan(pred), nearest, pred)

    def predict_counts(self, gene_idx: np.ndarray) -> np.ndarray:
        counts = self.slide.counts[self.rows][:, gene_idx].toarray().astype(np.float64)
        return np.clip(self._interpolate(counts), 0, None).astype(np.float32)


class InterpolationEstimator(Estimator):
    """``nearest``, ``linear`` or ``cubic`` interpolation of counts and depth."""

    def __init__(self, method: str) -> None:
        if method not in METHODS:
            raise ConfigError(f"method: {method!r} is not allowed; expected one of {METHODS}")
        self.name = method

    def events(self, request: FitRequest) -> Generator[TrainEvent, None, InterpolationModel]:
        slide = request.slide
        return (
            yield from instant_fit(
                lambda model: f"{self.name} interpolation of counts and depth",
                lambda: InterpolationModel(self.name, slide.lattice.kind),
            )
        )


__all__ = ["InterpolationEstimator", "InterpolationModel", "METHODS"]
