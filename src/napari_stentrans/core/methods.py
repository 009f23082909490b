"""The names of the methods ``evaluate`` compares (no heavy imports: the CLI's help lists them).

The presets are named as everywhere else (``--preset``, ``st.preset``); their names in reports
of version 0.2.0 and earlier (``stentrans``, ``stentrans_transformer``, ``stentrans_published``) are still
accepted (:data:`METHOD_ALIASES`).
"""

from __future__ import annotations

METHODS = (
    "default",
    "transformer",
    "published",
    "nearest",
    "linear",
    "cubic",
    "lowrank",
    "lowrank_linear",
    "lowrank_kernel",
    "residual_cnn",
)
# the methods that train a network (minutes on a CPU): their training progress is worth showing
TRAINED_METHODS = ("transformer", "published", "residual_cnn")
# the presets' names in evaluation reports of version 0.2.0 and earlier
METHOD_ALIASES = {
    "stentrans": "default",
    "stentrans_transformer": "transformer",
    "stentrans_published": "published",
}
# one line per method, for ``stentrans evaluate --help`` and error messages
METHOD_HELP = {
    "default": "the default preset (classical low-rank + gene residuals; was 'stentrans')",
    "transformer": "the transformer preset (learned correction; was 'stentrans_transformer')",
    "published": "the authors' recipe (was 'stentrans_published')",
    "nearest": "nearest-neighbour interpolation",
    "linear": "linear interpolation (Delaunay)",
    "cubic": "cubic interpolation",
    "lowrank": "the default without gene residuals (the previous default)",
    "lowrank_linear": "low-rank + linear interpolation on the evaluated genes",
    "lowrank_kernel": "low-rank + Gaussian kernels on the evaluated genes",
    "residual_cnn": "a DIST-like residual CNN",
}


def canonical_method(name: str) -> str:
    """A method's name as reports use it (``stentrans`` -> ``default``, ...)."""
    return METHOD_ALIASES.get(name, name)


__all__ = ["METHODS", "METHOD_ALIASES", "METHOD_HELP", "TRAINED_METHODS", "canonical_method"]
