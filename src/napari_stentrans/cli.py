"""``stentrans``: command-line front end of the engine.

Every problem the user can fix (a :class:`~.core.errors.StentransError`: bad input file, invalid
option, unusable model, unavailable device, ...) prints one line ``stentrans: error: ...`` naming
the file or option and the problem, exits with status 2 and writes nothing. Ctrl-C or a stop
exits 130, SIGTERM 143, and both write nothing (temporaries removed, previous outputs kept). A reader
that leaves early (``| head -1``) ends the command quietly (exit 141, as a SIGPIPE would). Anything else is a bug: it keeps its traceback (exit 1).

``stentrans --help`` and ``stentrans info`` import no torch: only learned models need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from .core.errors import InputError

EXIT_INPUT = 2
EXIT_INTERRUPT = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells report for a terminated command
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for a writer whose reader left
MODEL_SUFFIX = ".safetensors"
TABLE_HELP = "the table to read from a SpatialData store that holds several"


class CliError(InputError):
    """A problem with the command's arguments, reported as one line."""


LIBRARY_HELP = "the library (section) to read from an .h5ad holding several (obs['library_id'])"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stentrans",
        description="Spatial transcriptomics enhancement with stEnTrans (2x lattice, lost-spot imputation).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a slide (format, lattice, spots, genes) or a saved model")
    info.add_argument(
        "path",
        type=Path,
        help="Space Ranger folder, .h5ad (an enhanced one too), SpatialData .zarr, ST table, or a model "
        "file (.safetensors, from --save-model)",
    )
    info.add_argument("--coords", type=Path, help="coordinates table for a counts table")
    info.add_argument("--library", metavar="NAME", help=LIBRARY_HELP)
    info.add_argument("--table", help=TABLE_HELP)

    enh = sub.add_parser("enhance", help="fit a model on the slide (or load one) and write the 2x slide")
    enh.add_argument(
        "path", type=Path, help="Space Ranger folder, .h5ad, SpatialData .zarr, or ST counts table"
    )
    enh.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .h5ad, or .zarr for a SpatialData store (needs the [spatialdata] extra)",
    )
    enh.add_argument("--coords", type=Path, help="coordinates table for a counts table")
    enh.add_argument("--library", metavar="NAME", help=LIBRARY_HELP)
    enh.add_argument("--table", help=TABLE_HELP)
    enh.add_argument(
        "--preset",
        choices=["default", "transformer", "published"],  # = core.presets.PRESETS (tested)
        default="default",
        help="default: classical low-rank estimate plus shrunk gene residuals (no training; the "
        "most accurate preset on the honest benchmark, docs/accuracy); "
        "transformer: a learned ViT correction of the default's estimate (research: it has not beaten "
        "the default); published: the authors' recipe",
    )
    enh.add_argument("--epochs", type=int, help="training epochs (preset default otherwise)")
    enh.add_argument(
        "--genes",
        help="genes to enhance: a number N (most variable), comma-separated names, @FILE (names one "
        "per line), or all (every gene, detected or not; default: all genes detected in >= 10%% of spots)",
    )
    enh.add_argument(
        "--train-genes",
        type=int,
        metavar="N",
        help="the number of most variable genes the model is fitted on: the default's low-rank "
        "basis, a learned preset's training genes (some held out to validate it; default 2000)",
    )
    enh.add_argument(
        "--mask",
        type=Path,
        help="lost sites (imputed, never used as input): a CSV with array_row,array_col columns, a "
        "barcode column, or one column of barcodes (header optional)",
    )
    enh.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    enh.add_argument("--seed", type=int, help="random seed (default 0)")
    enh.add_argument("--save-model", type=Path, help="also write the fitted model here (.safetensors)")
    enh.add_argument("--model", type=Path, help="apply this saved model instead of fitting one")
    enh.add_argument(
        "--finetune",
        type=int,
        metavar="EPOCHS",
        help="with --model: fine-tune the learned correction on this slide for EPOCHS epochs first "
        "(a pretrained model is always judged on the slide's held-out genes, fine-tuned or not)",
    )
    enh.add_argument(
        "--keep-classical",
        action="store_true",
        help="with --model on another slide: keep the model's classical rank and smoothers "
        "instead of re-choosing them on this slide",
    )
    enh.add_argument(
        "--keep-measured",
        action="store_true",
        help="measured spots keep their measured counts in X (default: the estimate, like every "
        "other site; the measured counts are in layers['measured'] either way)",
    )
    enh.add_argument(
        "--calibrate-counts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale each gene's enhanced counts to its measured counts near every site and so they sum "
        "to them over the measured spots (default and transformer presets; the published recipe writes "
        "its raw counts); --no-calibrate-counts writes the back-transformed smoothed log values, which "
        "run below the measured level (per gene a median of about 0.4-0.8 of it on real slides, far "
        "less on shallow ones)",
    )
    enh.add_argument(
        "--calibration-bandwidth",
        default=_NOT_GIVEN,
        metavar="PITCHES|slide",
        help="neighbourhood, in input spot pitches, over which each gene's counts are matched to the "
        "measured ones (default 1; a gene with few counts nearby keeps its slide-wide factor); "
        "'slide': one factor per gene for the whole slide",
    )
    enh.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="impute every lattice site enclosed by tissue (--fill-holes), or only lost sites and "
        "spots without counts (--no-fill-holes); default: sites the positions file marks in tissue "
        "without counts, and enclosed sites only when the slide has no tissue mask (ST tables, .h5ad)",
    )
    enh.add_argument(
        "--plot",
        type=Path,
        help="write a PNG of the measured and enhanced expression of the --genes given by name (else "
        "the 3 most variable), over the H&E when the slide has one",
    )
    enh.add_argument(
        "--reference",
        nargs="+",
        type=Path,
        metavar="OTHER",
        help=REFERENCE_HELP,
    )
    enh.add_argument("--overwrite", action="store_true", help="replace existing output files")
    enh.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    pre = sub.add_parser(
        "pretrain",
        help="train one learned correction on several slides (several processes: torchrun, see README)",
    )
    pre.add_argument(
        "paths", nargs="+", type=Path, help="slides of one lattice type: Space Ranger folders, .h5ad, .zarr"
    )
    pre.add_argument("-o", "--output", type=Path, required=True, help="the model to write (.safetensors)")
    pre.add_argument("--epochs", type=int, help="training epochs (default: the transformer preset's 20)")
    pre.add_argument(
        "--train-genes",
        type=int,
        metavar="N",
        help="the number of most variable genes per slide to train on (some held out to validate; "
        "default 2000)",
    )
    pre.add_argument("--seed", type=int, help="random seed (default 0)")
    pre.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    pre.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    pre.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    from .core.methods import METHOD_HELP

    ev = sub.add_parser(
        "evaluate",
        help="honest accuracy against interpolation and classical baselines",
        description="Score methods on spots they never saw (every method by default).\n\nmethods:\n"
        + "\n".join(f"  {name:16s}{what}" for name, what in METHOD_HELP.items())
        + "\n\nmetrics (at the scored spots; median r over every scored gene, the others over the "
        "100 most spatially variable; README, 'Accuracy'):\n"
        + "\n".join(f"  {name:16s}{what}" for name, what in METRIC_HELP.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "path", type=Path, help="Space Ranger folder, .h5ad, SpatialData .zarr, or ST counts table"
    )
    ev.add_argument("--coords", type=Path, help="coordinates table for a counts table")
    ev.add_argument("--library", metavar="NAME", help=LIBRARY_HELP)
    ev.add_argument("--table", help=TABLE_HELP)
    ev.add_argument(
        "--protocol",
        choices=["heldout", "lost", "paper"],
        default="heldout",
        help="heldout (default, honest), lost (hidden blobs), paper (published, leaky)",
    )
    ev.add_argument(
        "--epochs", type=int, help="training epochs of the learned presets (transformer, published)"
    )
    ev.add_argument(
        "--genes",
        type=int,
        help="evaluate the N most variable detected genes (default: every gene detected in >= 10%% of "
        "the spots the methods see, which differs a little from info's count over all spots); the "
        "learned presets still train on their own training genes (up to 2,000)",
    )
    ev.add_argument(
        "--methods",
        help=f"comma-separated subset of {', '.join(METHOD_HELP)} (default: all; the former names "
        "stentrans, stentrans_transformer, stentrans_published still work)",
    )
    ev.add_argument(
        "--seed", type=int, default=0, help="random seed of the held-out split and the training (default 0)"
    )
    ev.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    ev.add_argument(
        "--labels",
        help="spot annotations for the ARI of a fixed clustering: an obs column of the slide, a CSV or "
        "TSV of barcode,label, or for legacy ST a table with x, y (array coordinates) and label "
        "columns (her2st's *_labeled_coordinates.tsv)",
    )
    ev.add_argument(
        "--reference",
        nargs="+",
        type=Path,
        metavar="OTHER",
        help="other slides of the same tissue given to the classical methods (default, lowrank, "
        "lowrank_linear, lowrank_kernel) as in enhance --reference; a reference holding the evaluated "
        "slide's spots is refused",
    )
    ev.add_argument("--json", type=Path, help="write the full report (per-gene r included) as JSON")
    ev.add_argument("--plot", type=Path, help="write a box plot of per-gene r per method")
    ev.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ev.add_argument(
        "--quiet",
        action="store_true",
        help="no progress of the methods that train (transformer, published, residual_cnn)",
    )
    return parser


QUIET_HELP = "no progress on stderr (stage lines, training bar); warnings and the summary still print"
REFERENCE_HELP = (
    "other slides of the same tissue (e.g. adjacent sections; Space Ranger folders, .h5ad, .zarr; "
    "never the slide itself): the low-rank basis of the default estimate (gene loadings) is fitted "
    "on their spots pooled with the slide's own, each slide centred on its own gene means, genes "
    "matched by name; basis genes a reference lacks are left out of the basis (still enhanced); "
    "fewer than 50 shared basis genes is refused. The basis mean, the spot scores, the choice of "
    "rank, smoothers and gene residuals, and depth stay the slide's own. Default preset only; the "
    "references are recorded in uns['stentrans']"
)


def _version() -> str:
    from . import __version__

    return __version__


def _check_output(
    path: Path | None, inputs: list[Path], overwrite: bool, suffix: str | tuple[str, ...]
) -> None:
    if path is None:
        return
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if path.suffix.lower() not in suffixes:
        raise CliError(f"{path}: output must be a {' or '.join(suffixes)} file")
    resolved = path.resolve()
    for inp in inputs:
        if (
            inp is not None
            and inp.exists()
            and (
                resolved == inp.resolve()
                or inp.resolve() in resolved.parents
                or resolved in inp.resolve().parents  # an input inside the store to replace
            )
        ):
            raise CliError(f"{path}: output would overwrite or go inside the input {inp}")
    from .core.files import check_output

    # a folder, a dangling link, an existing file, a missing or read-only folder, a name too long
    check_output(path, overwrite=overwrite, store=path.suffix.lower() == ".zarr")


def _check_device(name: str | None) -> str:
    """The device name, refused before any reading when it is asked for and not available.

    CUDA or MPS named explicitly is checked even for presets that run no network, so that
    ``--device cuda`` on a machine without it stops with one line instead of being ignored
    (``auto`` and ``cpu`` need no check and keep torch unimported).
    """
    from .core.config import Runtime

    device = Runtime(device=name or "auto").device
    if device not in ("auto", "cpu"):
        from .core.device import resolve_device

        resolve_device(device)
    return device


def _parse_genes(text: str | None):
    """``--genes``: None (default), ``all``, a positive number, comma-separated names, or
    ``@FILE``: names one per line or comma-separated (a list of 33,000 names exceeds the
    per-argument limit of Linux, 128 KiB)."""
    if text is None:
        return None
    text = text.strip()
    if text.lower() == "all":
        return "all"
    if text.lstrip("+-").isdigit():
        if int(text) < 1:
            raise CliError(f"--genes: {text} is not a positive number of genes")
        return int(text)
    if text.startswith("@"):
        source = Path(text[1:])
        if not source.is_file():
            raise CliError(f"--genes: gene list file {source} not found")
        try:
            text = source.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--genes: cannot read {source} ({exc})") from exc
        names = [g.strip() for g in text.replace(",", "\n").splitlines() if g.strip()]
        if not names:
            raise CliError(f"--genes: {source} lists no gene")
        return names
    names = [g.strip() for g in text.split(",") if g.strip()]
    if not names:
        raise CliError("--genes: empty gene list")
    return names


def _read_input(args: argparse.Namespace):
    """The slide named on the command line (``path``, ``--coords``, ``--library``, ``--table``).

    A Space Ranger folder with a count matrix holds one library, filed under the folder's name
    (a Visium HD top folder has none: reading it names its bin folders): a ``--library`` naming
    another one is refused (a mistyped name would otherwise silently rename the library; the
    Python API's ``read(folder, library=...)`` still files it under the name given).
    """
    from .core.io import input_format, read

    path = Path(args.path)
    one_library = input_format(path) == "spaceranger" and any(path.glob("*filtered_feature_bc_matrix*"))
    if args.library is not None and one_library and args.library != path.name:
        raise CliError(
            f"{path}: this folder holds one library, {path.name}; --library names the library of a "
            f"multi-library .h5ad: leave it out here (--library {args.library!r} does not match)"
        )
    return read(args.path, coords=args.coords, library=args.library, table=args.table)


def _images_text(adata) -> str:
    """``uns["spatial"]``'s images in words: ``"lowres, hires (LIBRARY)"`` per library, or ``"none"``."""
    parts = []
    for library, entry in dict(adata.uns.get("spatial", {})).items():
        names = sorted(dict(entry.get("images", {}))) if isinstance(entry, dict) else []
        if names:
            parts.append(f"{', '.join(names)} ({library})")
    return "; ".join(parts) if parts else "none"


def _coordinates_text(adata) -> str | None:
    """Where the spots' lattice coordinates came from, when the reader recorded it."""
    return adata.uns["stentrans_lattice"].get("coordinates")


def cmd_info(args: argparse.Namespace) -> int:
    from .core.io import LeftOutFeaturesWarning, is_enhanced
    from .core.io.common import suffix
    from .core.io.enhanced import read_enhanced_summary
    from .core.sites import output_sites
    from .core.slide import MIN_DEPTH_FRACTION, Slide

    path = Path(args.path)
    if path.is_file() and path.suffix in (MODEL_SUFFIX, ".pt"):  # a saved model (.pt: version 0.1.0)
        from .core.checkpoint import load_model

        print(_describe_model(path, load_model(path)))
        return 0
    if path.is_file() and suffix(path) == ".h5ad":  # an output is described without its values
        summary = read_enhanced_summary(path)
        if summary is not None:
            print(_describe_enhanced(args.path, summary))
            return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeftOutFeaturesWarning)  # its "note:" line says it
        adata = _read_input(args)
    if is_enhanced(adata):
        print(_describe_enhanced(args.path, adata))
        return 0
    slide = Slide.from_adata(adata)
    sites = output_sites(slide)
    kinds = {k: int((sites.kind == k).sum()) for k in ("measured", "imputed", "new")}
    info = adata.uns["stentrans_lattice"]
    detected = len(slide.eligible_genes(0.10))
    empty = int(np.sum(slide.depth == 0))
    # measured but below the depth floor: not used as input, imputed like the empty ones
    shallow = int(np.sum(slide.not_lost & ~slide.usable)) - empty
    absent = len(info.get("in_tissue_unmeasured", ()))
    notes = [f"{empty} without counts, imputed"] if empty else []
    if shallow:
        notes.append(f"{shallow} with fewer than {MIN_DEPTH_FRACTION:.1%} of the median depth, imputed")
    if absent:
        notes.append(f"{absent} more in tissue but absent from the matrix, imputed")
    lines = [
        f"path:      {args.path}",
        f"lattice:   {info['kind']} (pitch {info['pitch_um']:g} um)",
        f"spots:     {adata.n_obs}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + f"; array_row {slide.row.min()}..{slide.row.max()}, array_col {slide.col.min()}..{slide.col.max()}",
        f"genes:     {adata.n_vars} ({detected} detected in >= 10% of spots)",
        f"variable:  {_variable_text(adata, slide)}",
        f"depth:     median {np.median(slide.depth):.0f} counts per spot",
        f"2x output: {kinds['measured']} measured, {kinds['imputed']} imputed"
        + (
            f" ({_imputed_text(empty, shallow, absent, kinds['imputed'], bool(slide.unmasked_holes()))})"
            if kinds["imputed"]
            else ""
        )
        + f", {kinds['new']} new sites",
        f"images:    {_images_text(adata)}",
    ]
    if _coordinates_text(adata) is not None:
        lines.insert(2, f"coords:    {_coordinates_text(adata)}")
    if "stentrans_read_note" in adata.uns:
        lines.append(f"note:      {adata.uns['stentrans_read_note']}")
    if slide.imputation_warning() is not None:
        lines.append(f"warning:   {slide.imputation_warning()}")
    print("\n".join(lines))
    return 0


#: genes ``info`` names: a new user had no names to give ``--genes``
N_INFO_GENES = 8


def _variable_text(adata, slide) -> str:
    """``info``'s spatially variable genes of ``slide`` (built from ``adata``), by symbol where the
    var names are ids (as ``--genes`` takes them), most variable first."""
    from .core.display import spatially_variable_genes
    from .core.slide import gene_label

    genes = [gene_label(adata.var, g) for g in spatially_variable_genes(slide, N_INFO_GENES)]
    return f"{', '.join(genes)} (the {len(genes)} most spatially variable; --genes takes these names)"


#: why sites enclosed by measured spots are imputed on a slide without a tissue mask, and the way out
HOLES_NOTE = (
    "this input has no tissue mask, so a tear, fold or lumen enclosed by tissue is imputed too; "
    "--no-fill-holes leaves such sites empty"
)


def _imputed_text(empty: int, near_empty: int, absent: int, imputed: int, unmasked: bool = False) -> str:
    """Where ``info``'s imputed sites come from, in the words of its ``spots`` line: spots without
    counts, near-empty spots, sites in tissue without counts, and the rest lattice sites enclosed
    by measured spots (``fill_holes``; ``unmasked``: on a slide without a tissue mask, said why)."""
    enclosed = max(0, imputed - empty - near_empty - absent)
    parts = [
        f"{n} {one if n == 1 else many}"
        for n, one, many in (
            (empty, "spot without counts", "spots without counts"),
            (near_empty, "near-empty spot", "near-empty spots"),
            (absent, "in tissue without counts", "in tissue without counts"),
            (enclosed, "enclosed by measured spots", "enclosed by measured spots"),
        )
        if n
    ]
    if unmasked and enclosed:  # the last part
        parts[-1] += f": {HOLES_NOTE}"
    return ", ".join(parts)


def _x_holds(info: dict) -> str:
    """What ``X`` of an enhanced file holds: a --keep-measured output keeps the measured counts
    at measured sites (``info`` said "predictions, not counts" of it)."""
    from .core.estimators.base import MeasuredCounts

    if info.get("measured_sites") == MeasuredCounts.NOTE:
        return "X holds the measured counts at measured sites (--keep-measured) and predictions elsewhere"
    return "X holds predictions, not counts"


def _among(among: int, n: int) -> str:
    """How many of an output's ``n`` genes are among the model's training genes, in words (it
    said "4 of them among these 4" and "0 of them among these 1")."""
    if n == 1:
        return "this gene among them" if among else "this gene not among them"
    if among == n:
        return f"all {n} of these among them"
    return f"{among or 'none'} of these {n} among them"


def _describe_enhanced(path: Path, adata) -> str:
    """``info`` of an enhanced slide: where it came from, its half-pitch lattice and its sites."""
    info = adata.uns["stentrans"]
    lattice = adata.uns["stentrans_lattice"]
    kinds = adata.obs["kind"].value_counts()
    row, col = adata.obs["array_row"], adata.obs["array_col"]
    among = int(np.sum(adata.var["training_gene"])) if "training_gene" in adata.var else 0
    n_training = info.get("n_training_genes")  # absent from files of older versions
    if n_training is None:
        genes = f"{adata.n_vars} enhanced ({among} of them training genes of the model)"
    elif int(n_training):
        # a classical estimate (the default, or a learned preset whose network was not kept)
        # trains nothing: its training genes are those of its low-rank basis
        classical = (info.get("model") or {}).get("estimator") == "classical"
        what = "its low-rank basis was fitted on" if classical else "its network was trained on"
        held = "" if classical else " (less those held out to validate it)"
        which = _among(among, adata.n_vars)
        genes = f"{adata.n_vars} enhanced; {what} the {int(n_training)} most variable genes{held}, {which}"
    else:
        genes = f"{adata.n_vars} enhanced (the method uses no training genes)"
    return "\n".join(
        [
            f"path:      {path}",
            f"enhanced:  by napari-stentrans {info.get('version', '?')} (preset {info.get('preset', '?')}) "
            f"from {info.get('source') or 'an unnamed slide'}; {_x_holds(info)}",
            f"lattice:   {lattice['kind']} at half pitch ({lattice['pitch_um']:g} um; input "
            f"{float(info.get('input_pitch_um', 2 * lattice['pitch_um'])):g} um)",
            f"sites:     {adata.n_obs} ({kinds.get('measured', 0)} measured, {kinds.get('imputed', 0)} "
            f"imputed, {kinds.get('new', 0)} new); array_row {row.min()}..{row.max()}, "
            f"array_col {col.min()}..{col.max()}",
            f"genes:     {genes}",
            f"counts:    {info.get('count_level') or 'not calibrated (written before count calibration)'}",
            f"images:    {_images_text(adata)}",
        ]
        # why the model is not what the preset names (a learned preset whose network was refused)
        + ([f"note:      {note}"] if (note := (info.get("model") or {}).get("note")) else [])
        # the pattern check enhance printed (absent from files of older versions)
        + ([f"patterns:  {text}"] if (text := _patterns_text(info.get("patterns") or {})) else [])
        + ([f"warning:   {info['patterns']['warning']}"] if "warning" in (info.get("patterns") or {}) else [])
    )


def _describe_model(path: Path, model) -> str:
    """``info`` of a saved model: what makes its estimate, on which genes, and how it was judged."""
    classical = getattr(model, "params", None) or getattr(getattr(model, "classical", None), "params", None)
    judged, history = model.validation, model.history
    if model.uses_network:
        what = "a network" + (" correcting the default's estimate" if classical is not None else "")
        genes = f"its network was trained on the {len(model.training_genes)} most variable genes (less those held out)"
    else:
        note = getattr(model, "note", "")
        what = "the default's classical estimate" + (" (its network was not kept)" if note else "")
        genes = f"its low-rank basis was fitted on the {len(model.training_genes)} most variable genes"
    lines = [
        f"path:      {path}",
        f"model:     preset {model.name}: {what}; {_lattice_words(model.lattice_kind)}",
        f"genes:     {genes}",
    ]
    if classical is not None:
        chosen = (
            "kept on the slide it was fitted on, re-chosen on any other"
            if getattr(model, "slide_fingerprint", "")
            else "re-chosen on each slide it enhances"
        )
        lines.append(f"classical: {classical.summary()} ({chosen})")
    if history.get("epoch"):
        val = history["val_loss"]
        best = int(judged.get("best_epoch", int(np.nanargmin(val))))
        scores = (
            f"; correlation score {judged['val_score']:.3f} (the default's {judged['default_val_score']:.3f})"
            if "val_score" in judged and "default_val_score" in judged
            else ""
        )
        lines.append(
            f"training:  {int(max(history['epoch']))} epoch(s); held-out loss {val[0]:.4f} at the start, "
            f"best {val[best]:.4f} at epoch {best}"
            + (" (no epoch beat the start)" if best == 0 else "")
            + scores
        )
    for slide in getattr(model, "pretrained_on", []):
        lines.append(f"pretrained on: {slide['name']} ({slide['n_spots']} spots)")
    if getattr(model, "note", ""):
        lines.append(f"note:      {model.note}")
    return "\n".join(lines)


def _lattice_words(kind: str) -> str:
    """A lattice kind with the platform that has it, for messages."""
    platform = {"hex": "Visium", "square": "legacy ST, 1k", "checkerboard": "legacy ST, 2k"}.get(kind)
    return f"{kind} lattice ({platform})" if platform else f"{kind} lattice"


#: an option not given on the command line, where None is a value (``--calibration-bandwidth slide``)
_NOT_GIVEN = object()


def _calibration_bandwidth(text: str) -> float | None:
    """``--calibration-bandwidth``: a positive number of pitches, or ``slide`` (None); a one-line
    :class:`CliError` otherwise."""
    if text.strip().lower() == "slide":
        return None
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--calibration-bandwidth: {text!r} is not a number of pitches or 'slide'") from None
    if not 0 < value <= 100:
        raise CliError(
            f"--calibration-bandwidth: {text} is not in (0, 100] input spot pitches ('slide' for one factor per gene)"
        )
    return value


def _training_options(args: argparse.Namespace) -> dict:
    """The training options given on the command line (left out when not given)."""
    given = {
        "epochs": args.epochs,
        "n_train_genes": args.train_genes,
        "seed": args.seed,
        "calibrate_counts": getattr(args, "calibrate_counts", None),
    }
    options = {k: v for k, v in given.items() if v is not None}
    bandwidth = getattr(args, "calibration_bandwidth", _NOT_GIVEN)
    if bandwidth is not _NOT_GIVEN:
        if options.get("calibrate_counts") is False or getattr(args, "preset", None) == "published":
            raise CliError(
                "--calibration-bandwidth sets how counts are calibrated: it does not apply with "
                "--no-calibrate-counts or the published preset (which writes its raw counts)"
            )
        options["calibration_bandwidth"] = _calibration_bandwidth(bandwidth)
    return options


def cmd_enhance(args: argparse.Namespace) -> int:
    references = list(args.reference or [])
    _check_output(
        args.output,
        [args.path, args.coords, args.mask, args.model, *references],
        args.overwrite,
        (".h5ad", ".zarr"),
    )
    if references and (args.model is not None or args.save_model is not None or args.preset != "default"):
        raise CliError(
            "--reference shapes the default preset's basis on this slide: it does not apply with "
            "--model, --save-model (such a model is not saved) or another --preset"
        )
    spatialdata_out = args.output.suffix.lower() == ".zarr"
    if spatialdata_out:
        from .core.io.spatialdata import INSTALL, _spatialdata

        if _spatialdata() is None:
            raise CliError(f"{args.output}: writing SpatialData needs the spatialdata package: {INSTALL}")
    _check_output(args.save_model, [args.path, args.model], args.overwrite, MODEL_SUFFIX)
    _check_output(args.plot, [args.path], args.overwrite, ".png")
    options = _training_options(args)
    if args.model is not None and options:
        raise CliError(
            "--model applies a fitted model (with its own count calibration): --epochs/--train-genes/"
            "--seed/--[no-]calibrate-counts/--calibration-bandwidth do not apply"
        )
    if args.model is None and args.keep_classical:
        raise CliError("--keep-classical applies to a model given with --model")
    if args.finetune is not None and args.model is None:
        raise CliError("--finetune needs --model: it fine-tunes a saved (pretrained) model on this slide")
    if args.finetune is not None and args.finetune < 0:
        raise CliError(f"--finetune: {args.finetune} is not a number of epochs (>= 0)")
    from .core.config import preset

    device = _check_device(args.device)
    preset(args.preset, "square", **options)  # invalid options fail here, before any reading
    genes = _parse_genes(args.genes)
    if args.mask is not None and not args.mask.is_file():
        raise CliError(f"{args.mask}: mask file not found")
    from contextlib import ExitStack
    from tempfile import TemporaryDirectory

    from .core.checkpoint import load_model
    from .core.errors import TrainingStopped
    from .core.files import atomic_outputs
    from .core.fitting import Trainer
    from .core.slide import Slide

    model = load_model(args.model) if args.model is not None else None
    from .core.io import refuse_enhanced

    adata = _read_input(args)
    refuse_enhanced(adata)  # before the mask is checked: the slide itself is at fault
    # prepared once for fitting and enhancing; a mask file's errors name it (core/masks.py)
    slide = Slide.from_adata(adata, args.mask, "auto" if args.fill_holes is None else args.fill_holes)
    if model is not None and model.lattice_kind != slide.lattice.kind:
        raise CliError(
            f"{args.model}: this model was fitted on a {_lattice_words(model.lattice_kind)} but "
            f"{args.path} is on a {_lattice_words(slide.lattice.kind)}; a model applies only to slides "
            "of its lattice kind: enhance without --model (a model is fitted on this slide), or give "
            f"one fitted on a {slide.lattice.kind} slide"
        )
    slide.warn_imputation()  # before any training (printed as one line by main)
    config = preset(args.preset, slide.lattice.kind, **options)
    min_detection = model.min_detection if model is not None else config.data.min_detection
    if genes == "all":
        genes = list(slide.genes)
    try:
        gene_idx = slide.gene_indices(genes, min_detection)  # unknown genes fail here, not after training
    except InputError as exc:  # name the option (and the list file) the genes came from
        if args.genes is None:
            raise
        given = args.genes.strip()
        raise CliError(f"--genes{' ' + given if given.startswith('@') else ''}: {exc}") from exc
    _check_free_space(args, slide, len(gene_idx))
    stop = threading.Event()
    trainer = None
    if model is None:
        from .core.reference import read_references

        reference = read_references(references) if references else None
        names = [str(p) for p in references] or None
        trainer = Trainer(slide, config, device=device, reference=reference, reference_names=names)
    bar = _ProgressBar(disabled=args.quiet)
    try:
        from .core.pretrain import uses_validation

        judged_here = model is not None and (args.finetune is not None or uses_validation(model))
        if judged_here:
            # a pretrained model is judged on this slide's held-out genes (and fine-tuned) first
            if args.keep_classical:
                raise CliError(
                    "--keep-classical: a pretrained model's classical estimate is chosen on the slide"
                )
            model = _drive(_finetune_events(model, slide, args.finetune or 0, device, stop), bar)
        if trainer is not None:
            for event in trainer.run(stop):
                bar.update(event)
            model = trainer.result
            if model is None:
                raise TrainingStopped("training stopped by request; nothing was written")
        bar.close()  # training is over; the bar would otherwise sit under the write
        # every output appears together, or none does; without --overwrite none replaces a file
        # another run created meanwhile
        with ExitStack() as scratch_dirs, atomic_outputs(exclusive=not args.overwrite) as outputs:
            # the matrix goes to disk gene batch by gene batch: memory does not grow with genes
            if spatialdata_out:  # streamed to a hidden .h5ad beside the store, converted below
                scratch = Path(
                    scratch_dirs.enter_context(
                        TemporaryDirectory(prefix=".stentrans.", dir=args.output.parent)
                    )
                )
                h5ad_path = scratch / "enhanced.h5ad"
            else:
                h5ad_path = outputs.path(args.output)
            written = model.write(
                slide,
                h5ad_path,
                genes=genes,
                device=device,
                stop=stop,
                inputs=(args.path, args.coords, args.mask, args.model),
                classical="keep" if args.keep_classical else "auto",
                measured="keep" if args.keep_measured else "estimate",
                callback=bar.update,  # seconds of silence after the fit on a large slide
            )
            if args.save_model is not None:
                model.save(outputs.path(args.save_model))
            if args.plot is not None:
                _plot(adata, written, outputs.path(args.plot), genes)
            if spatialdata_out:  # last: the store appears when everything else has worked
                import anndata as ad

                from .core.estimators.base import stage_event
                from .core.io.spatialdata import write_spatialdata

                # seconds after the write's bar ended (Vis7B: 3 s), said
                bar.update(stage_event(f"writing the SpatialData store {args.output.name}", 0, 1, 0.0))
                write_spatialdata(
                    ad.read_h5ad(h5ad_path), args.output, inputs=(args.path,), overwrite=args.overwrite
                )
    finally:
        bar.close()
    counts = written.obs["kind"].value_counts()
    n_sites, n_genes = written.shape
    print(
        f"wrote {args.output}: {n_sites} sites ({counts.get('measured', 0)} measured, "
        f"{counts.get('imputed', 0)} imputed, {counts.get('new', 0)} new) "
        f"x {n_genes} gene{'s' * (n_genes != 1)}"
        + (f"; model {args.save_model}" if args.save_model else "")
        + (f"; plot {args.plot}" if args.plot else "")
    )
    if holes := slide.unmasked_holes():
        print(f"note: {holes} site{'s' * (holes != 1)} enclosed by measured spots imputed: {HOLES_NOTE}")
    # why a learned preset's output is the classical estimate, before that estimate is described
    if not model.uses_network and getattr(model, "note", ""):  # e.g. `default --epochs 2`, not kept
        if args.model is not None and not judged_here:  # its note is of the slide it was fitted on
            from .core.estimators.learned import fitted_elsewhere

            print(
                f"note: {args.model.name} holds no network; when it was fitted on its own slide, "
                f"{fitted_elsewhere(model.note)}"
            )
        else:
            print(f"note: {model.note}")
    if "classical_summary" in written.uns:
        print(f"classical estimate {written.uns['classical_choice']}: {written.uns['classical_summary']}")
    if getattr(model, "reference", None) is not None:
        ref = model.reference
        print(
            f"basis gene loadings fitted with {len(ref.slides)} reference slide(s): {'; '.join(ref.slides)}; "
            f"{len(ref.genes)} basis genes"
            + (f" ({ref.n_left_out} left out: not in every reference)" if ref.n_left_out else "")
        )
    judged = model.validation
    if "classical_val_loss" in judged and model.uses_network:  # a pretrained model, judged here
        from .core.estimators.learned import corrects_default

        best = int(judged["best_epoch"])
        default = judged.get("default_val_loss")
        base = judged["classical_val_loss"]
        if corrects_default(model.config):  # one estimate: the default's is the network's base
            bars = f"the default's estimate, which it corrects: {base:.4f}"
        else:
            bars = (
                f"the default's estimate: {default:.4f}; " if default is not None else ""
            ) + f"the low-rank estimate it corrects: {base:.4f}"
        print(
            f"the learned correction improved held-out genes on this slide: held-out loss "
            f"{model.history['val_loss'][best]:.4f} ({bars})"
            + (
                f"; correlation score {judged['val_score']:.3f} (the default's: "
                f"{judged['default_val_score']:.3f})"
                if "val_score" in judged and "default_val_score" in judged
                else ""
            )
        )
    patterns = written.uns["patterns"]
    if (text := _patterns_text(patterns)) is not None:
        print(f"patterns: {text}")
    # a warning was printed as `stentrans: warning: ...` when the writer issued it
    if "warning" not in patterns and "no_warning" in patterns:  # weak evidence: what was missing
        print(f"patterns: {patterns['no_warning']}")
    return 0


def _patterns_text(patterns: dict) -> str | None:
    """The output's pattern check in one line (``uns["stentrans"]["patterns"]``): the enhanced
    genes' effective rank and PC1 share beside the measured ones', and why no verdict was
    given when none was (said, not silent); None when there is nothing to say."""
    from .core.patterns import with_signal

    not_judged = f"not judged: {patterns['not_judged']}" if "not_judged" in patterns else None
    if "effective_rank" not in patterns:
        return not_judged
    nan = float("nan")
    rank = with_signal(
        patterns["measured_effective_rank"], patterns.get("measured_signal_effective_rank", nan), ".1f"
    )
    pc1 = with_signal(patterns["measured_pc1_share"], patterns.get("measured_signal_pc1_share", nan), ".0%")
    return (
        f"effective rank {patterns['effective_rank']:.1f} of the enhanced genes (measured {rank}), PC1 share "
        f"{patterns['pc1_share']:.0%} (measured {pc1}) over the {patterns['n_genes']} most spatially variable "
        "genes" + (f"; {not_judged}" if not_judged else "")
    )


def _check_free_space(args: argparse.Namespace, slide, n_genes: int) -> None:
    """Refuse before any training when the outputs' file systems lack room for them.

    The .h5ad holds ``X`` dense (4 bytes per site and gene), ``layers["measured"]`` (at most 8
    bytes per stored count) and the input's images (written compressed; counted whole, an upper
    bound); a learned model and a PNG take a few MB.
    """
    from .core.files import check_free_space
    from .core.sites import output_sites

    n_sites = len(output_sites(slide))
    images = sum(
        int(getattr(image, "nbytes", 0))
        for entry in slide.adata.uns.get("spatial", {}).values()
        if isinstance(entry, dict)
        for image in dict(entry.get("images", {})).values()
    )
    needs = {args.output: n_sites * n_genes * 4 + slide.counts.nnz * 8 + n_sites * 200 + images}
    for extra in (args.save_model, args.plot):
        if extra is not None:
            needs[extra] = 4 << 20
    check_free_space(needs)


def _finetune_events(model, slide, epochs: int, device: str, stop):
    from .core.pretrain import finetune_events

    return finetune_events(model, slide, epochs, device, stop)


def _drive(events, bar: _ProgressBar):
    """Run a fit's event generator through the progress bar; its model (TrainingStopped if stopped)."""
    from .core.errors import TrainingStopped

    while True:
        try:
            bar.update(next(events))
        except StopIteration as done:
            if done.value is None:
                raise TrainingStopped("training stopped by request; nothing was written") from None
            return done.value


def _distributed(device: str | None) -> tuple[int, int, str | None]:
    """Join the torchrun process group when there is one: ``(rank, world size, device)``.

    NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU (``--device cpu``, or no GPU).
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and (device is None or device.startswith(("auto", "cuda")))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device in (None, "auto"):
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def cmd_pretrain(args: argparse.Namespace) -> int:
    _check_output(args.output, list(args.paths), args.overwrite, MODEL_SUFFIX)
    options = _training_options(args)
    from .core.config import Runtime, preset

    preset("transformer", "square", **options)  # invalid options fail here, before any reading
    Runtime(device=args.device or "auto")
    rank, world, device = _distributed(args.device)
    device = Runtime(device=device or "auto").device
    from .core.io import read, refuse_enhanced
    from .core.pretrain import pretrain_events
    from .core.slide import Slide

    slides = []
    for path in args.paths:
        adata = read(path)
        refuse_enhanced(adata)
        slides.append(Slide.from_adata(adata))
    config = preset("transformer", slides[0].lattice.kind, **options)
    stop = threading.Event()
    bar = _ProgressBar(disabled=args.quiet or rank != 0)
    try:
        model = _drive(pretrain_events(slides, config, device, stop, [str(p) for p in args.paths]), bar)
    finally:
        bar.close()
    if rank == 0:
        model.save(args.output)  # atomic
        best = int(model.validation["best_epoch"])
        val = model.history["val_loss"]
        print(
            f"wrote {args.output}: a correction network pretrained on {len(slides)} "
            + ("slide " if len(slides) == 1 else "slides ")
            + f"({', '.join(s['name'] for s in model.pretrained_on)})"
            + (f" by {world} processes" if world > 1 else "")
            + f"; best epoch {best}, held-out loss {val[0]:.4f} (classical estimate) -> {val[best]:.4f}"
        )
        if best == 0:
            print(
                "stentrans: warning: the correction did not improve the pretraining slides' held-out genes; "
                "applied to a slide it will give the classical estimate",
                file=sys.stderr,
            )
    if world > 1:
        _end_process_group()
    return 0


def _end_process_group() -> None:
    """Leave torch.distributed cleanly: every rank done, then the group.

    One process of a two-process gloo run once aborted at exit ("terminate called without an
    active exception", a CI run); training frees its DDP wrapper before returning
    (:func:`~.core.training.train_slides`), and no rank destroys the group while another still
    uses it.
    """
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _plot(adata, written, path: Path, genes) -> None:
    """A side-by-side PNG of the genes named in --genes, else the three most variable (read back)."""
    import anndata as ad

    from .core.plotting import genes_to_plot, plot_side_by_side

    ranked = list(written.var.index[np.argsort(-written.log_variance)])
    # the written genes are the requested ones, in the order asked, by var_name (a symbol asked
    # for is written under its id)
    requested = [str(g) for g in written.var.index] if isinstance(genes, list) else None
    shown, left_out = genes_to_plot(requested, ranked)
    if left_out:
        print(
            f"stentrans: note: --plot shows the first {len(shown)} of the {len(requested)} genes given; "
            f"left out: {', '.join(left_out)}",
            file=sys.stderr,
        )
    enhanced = ad.read_h5ad(written.path, backed="r")
    try:
        shown_part = enhanced[:, shown].to_memory()
    finally:
        enhanced.file.close()
    plot_side_by_side(adata, shown_part, shown, path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    references = list(args.reference or [])
    _check_output(args.json, [args.path, args.coords, *references], args.overwrite, ".json")
    _check_output(args.plot, [args.path, args.coords, *references], args.overwrite, ".png")
    _check_device(args.device)
    if args.genes is not None and args.genes < 1:
        raise CliError(f"--genes: {args.genes} is not a positive number of genes")
    if args.epochs is not None:
        from .core.config import OptimConfig

        OptimConfig(epochs=args.epochs)  # validates before the slide is read
    import json

    from .core.evaluate import DEFAULT_METHODS, evaluate, signal_note
    from .core.files import atomic_outputs
    from .core.methods import METHOD_ALIASES, TRAINED_METHODS, canonical_method

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else DEFAULT_METHODS
    unknown = sorted(set(methods) - set(DEFAULT_METHODS) - set(METHOD_ALIASES))
    if unknown:
        raise CliError(f"--methods: unknown method(s) {unknown}; choose from {', '.join(DEFAULT_METHODS)}")
    adata = _read_input(args)
    from .core.io import refuse_enhanced

    refuse_enhanced(adata)  # before the note on training: the file cannot be scored at all
    labels = _read_labels(args.labels, adata) if args.labels is not None else None
    from .core.reference import read_references

    reference = read_references(references) if references else None
    ari = labels is not None
    header = (
        f"{'method':22s} {'median r':>9s} {'r (norm)':>9s} {'gene-specific r':>16s} {'co-expr r':>10s} "
        f"{'(signal)':>9s} {'PC1 share':>10s} {'eff. rank':>10s} {'level':>6s}"
        + (f" {'ARI':>6s}" if ari else "")
        + f" {'seconds':>8s}"
    )
    # printed with the first row: evaluate() checks everything (references included) before
    # scoring, and a refusal must not follow half a table on stdout
    header_shown = False

    def show_header() -> None:
        nonlocal header_shown
        if not header_shown:
            print(header)
            header_shown = True

    def row(name: str, s: dict) -> str:
        return (
            f"{name:22s} {s['median_pcc']:9.3f} {s['median_pcc_norm']:9.3f} {s['gene_specific_r']:16.3f} "
            f"{s['coexpression_r']:10.3f} {s['coexpression_r_signal']:9.3f} {s['pc1_share']:10.2f} "
            f"{s['effective_rank']:10.1f} {s['count_level']:6.2f}" + (f" {s['ari']:6.3f}" if ari else "")
        )

    def show(name: str, s: dict) -> None:
        show_header()
        print(row(name, s) + f" {s['seconds']:8.1f}", flush=True)

    bar = _ProgressBar(disabled=args.quiet)

    def progress(name: str, event) -> None:
        # the methods that train take minutes; the others' stages would only crowd stderr
        if canonical_method(name) in TRAINED_METHODS:
            if event.kind == "prepared":
                event = dataclasses.replace(event, message=f"{name}: {event.message}")
            bar.update(event)

    learned = [m for m in methods if canonical_method(m) in TRAINED_METHODS]
    if learned and not args.methods and not args.quiet:
        # a user trying the command on a CPU waited minutes per learned method without knowing why
        print(
            f"stentrans: note: every method is scored; {', '.join(learned)} train on this slide first "
            f"(seconds to minutes each on a CPU, more on a large slide; --genes does not shorten "
            f"training); --methods {','.join(m for m in DEFAULT_METHODS if m not in learned)} scores "
            "the others in seconds",
            file=sys.stderr,
        )
    try:
        report = evaluate(
            adata,
            args.protocol,
            methods=methods,
            n_genes=args.genes,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            dataset=str(args.path),
            labels=labels,
            callback=show,
            reference=reference,
            reference_names=[str(p) for p in references] or None,
            progress=progress,
        )
    finally:
        bar.close()
    truth = report["truth"]
    show_header()  # when no method row was shown
    print(
        f"{'measured (truth)':22s} {'':9s} {'':9s} {'':16s} {'':10s} {'':9s} {truth['pc1_share']:10.2f} "
        f"{truth['effective_rank']:10.1f} {1.0:6.2f}" + (f" {truth['ari']:6.3f}" if ari else "")
    )
    noise_free = np.isfinite(
        truth.get("signal_effective_rank", float("nan"))
    )  # the truth's ranks without noise
    if noise_free:
        print(
            f"{' without Poisson noise':22s} {'':9s} {'':9s} {'':16s} {'':10s} {'':9s} "
            f"{truth['signal_pc1_share']:10.2f} {truth['signal_effective_rank']:10.1f}"
        )
    print(
        f"{args.protocol}: {report['n_heldout_spots']} scored spots"
        + (
            f" ({outside} more held out outside the seen spots' convex hull, where not every method "
            "predicts: not scored)"
            if (outside := report.get("n_outside_spots", 0))
            else ""
        )
        + f", {report['n_genes']} genes "
        + ("(the most variable of those " if args.genes is not None else "(")
        + "detected in >= 10% of the spots the methods see; info counts all spots); gene-specific "
        f"r, co-expression r, PC1 share and effective rank over the {len(report['spatial_genes'])} genes "
        "with the highest Moran's I on the seen spots"
        + "; level: predicted / measured counts per gene over the scored spots (median over genes)"
        + (f"; ARI over the {truth['n_labelled']} scored spots with a label" if ari else "")
        + (f"; {report['warning']}" if "warning" in report else "")
    )
    if noise_free:
        print(
            "without Poisson noise: the truth's PC1 share and effective rank by count splitting; a method "
            "under half of that rank is named on a patterns line (the bar of enhance's warning)"
        )
    print(signal_note(truth.get("signal_coexpression_reliability", float("nan"))))
    if (verdict := _few_patterns_line(report)) is not None:
        print(verdict)
    for name, scores in report["methods"].items():  # e.g. a learned preset that kept the default
        if scores.get("note"):
            print(f"note: {name}: {scores['note']}")
    if "reference" in report:
        used = [name for name, s in report["methods"].items() if s.get("reference")]
        print(f"reference slides: {'; '.join(report['reference'])}; used by {', '.join(used) or 'no method'}")
    with atomic_outputs(exclusive=not args.overwrite) as outputs:
        if args.json is not None:
            text = json.dumps(_finite(report), indent=1)
            outputs.path(args.json).write_text(text)
        if args.plot is not None:
            from .core.plotting import plot_evaluation

            plot_evaluation(report, outputs.path(args.plot))
    return 0


def _few_patterns_line(report: dict) -> str | None:
    """The methods whose predictions at the scored spots follow too few shared patterns
    (:func:`~.core.patterns.few_patterns`, the bar ``enhance`` warns by), in one line, or that
    none does; with too few genes to judge, why not (as ``enhance`` says it: silence was read as
    a pass); None without a finite truth rank. The napari Quality verdict says the same of the
    best method."""
    from .core.patterns import (
        MIN_GENES_STRONG,
        NOT_SUITABLE,
        SIGNAL_SHARE,
        compared,
        few_in_report,
        how_few,
        report_bar,
        too_few_genes,
    )

    measured, signal, n_genes = report_bar(report)
    if n_genes < MIN_GENES_STRONG:
        return f"patterns: not judged: {too_few_genes(n_genes)}"
    if not np.isfinite(measured):
        return None
    few = {
        name: s["effective_rank"]
        for name, s in report["methods"].items()
        if few_in_report(report, s.get("effective_rank"))
    }
    if not few:  # said, or the footer's "named on a patterns line" leaves the reader guessing
        if np.isfinite(signal):
            return (
                f"patterns: every method keeps at least {SIGNAL_SHARE:.0%} of the truth's effective rank "
                f"without its Poisson noise ({signal:.1f})"
            )
        return "patterns: no method follows too few shared patterns by enhance's bar"
    numbers = "; ".join(f"{name}: {compared(rank, measured, signal)}" for name, rank in few.items())
    verb = "follows" if len(few) == 1 else "follow"
    return f"patterns: {', '.join(few)} {verb} {how_few(signal)} ({numbers}): {NOT_SUITABLE}"


#: the columns of the evaluate table, as its help lists them
METRIC_HELP = {
    "median r": "median per-gene Pearson r on counts (r (norm): on normalised values)",
    "gene-specific r": "per-gene r left after removing the seen spots' top 3 principal axes",
    "co-expr r": "r between the gene-gene correlations of prediction and measured truth",
    "(signal)": "the same against the truth's correlations without Poisson noise (count splitting)",
    "PC1 share": "variance share of the prediction's first component (eff. rank: its effective rank); "
    "the truth's also without its Poisson noise (count splitting)",
    "level": "predicted / measured counts per gene over the scored spots, median over genes (1: measured)",
    "ARI": "fixed clustering against --labels, beside the same on the measured counts",
}


def _read_labels(spec: str, adata):
    """Annotations of the slide's spots: an obs column, or a table of barcode,label or x,y,label
    (legacy ST; missing: NA)."""
    if spec in adata.obs:
        return adata.obs[spec].astype(str).to_numpy()
    from .core.io.labels import read_labels

    if not Path(spec).is_file():
        raise CliError(f"--labels: {spec!r} is neither an obs column of the slide nor a file")
    array = (adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy())
    return read_labels(spec, adata.obs_names, array)


def _finite(value):
    """JSON cannot hold NaN: write null instead."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class _ProgressBar:
    """Training progress on stderr: a tqdm bar on a terminal, plain lines otherwise.

    On a terminal the bar is redrawn in place, with loss and validation in its postfix. When
    stderr is redirected (a log file, a pipe, a job scheduler) carriage-return animation would
    leave hundreds of partial lines, so it prints at most one line per tenth of the steps (and
    one when training ends) instead. Other lines printed while a bar is drawn go through
    :meth:`line`, which clears the bar first, so none lands in the middle of it.
    """

    active: _ProgressBar | None = None  # the bar on screen, for warnings printed meanwhile

    def __init__(self, disabled: bool, stream=None) -> None:
        self.disabled = disabled
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        self.total = 0
        self.done = 0
        self.reported = 0  # tenths of the steps already reported as a line (plain mode)
        self.started = 0.0
        self.stage_bar = None  # the current stage's bar of items (interactive)
        self.stage_name: str | None = None
        # the last epoch's own validation loss: the best one alone did not show why nothing improved
        self.last_val: tuple[int, float] | None = None
        self.best_at = 0

    def _best_at(self) -> str:
        """Whose the best validation loss is: the start's until an epoch beats it (said, or a
        user reads the start's loss as a trained network's)."""
        return "the start" if self.best_at == 0 else f"epoch {self.best_at}"

    def _interactive(self) -> bool:
        """A terminal that can draw a bar: tqdm draws nothing on one of 0 rows or columns (a
        pseudo-terminal without a size, as `script` or some job runners give), where plain lines
        are written instead (training looked frozen there)."""
        isatty = getattr(self.stream, "isatty", None)
        try:
            if not (isatty and isatty()):
                return False
        except ValueError:  # a closed stream
            return False
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError, AttributeError):  # a terminal whose size cannot be read
            return True
        return size.columns > 0 and size.lines > 0

    def line(self, text: str) -> None:
        """Print ``text`` on its own line of stderr, clearing the bar around it."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, event) -> None:
        if self.disabled:
            return
        if event.kind == "stage":
            self.stage(event)
            return
        self.close_stage()
        if event.kind == "prepared" and self.bar is None:  # a fit begins (a second one after a first)
            self.line(f"stentrans: {event.message}")
            self.total = event.n_steps * event.n_epochs
            self.done = self.reported = 0
            self.last_val = None
            self.best_at = 0  # the epoch whose weights are the best so far (0: the start)
            if self.total and self._interactive():
                from tqdm import tqdm

                self.bar = tqdm(
                    total=self.total,
                    desc=f"training on {event.device}",
                    unit="step",
                    file=self.stream,
                    dynamic_ncols=True,
                )
                _ProgressBar.active = self
            elif self.total:
                self.started = time.monotonic()
                self.line(f"stentrans: training on {event.device}: {self.total} steps")
        elif event.kind == "epoch" and event.val_loss is not None:
            self.last_val = (event.epoch, float(event.val_loss))
            if event.best_val_loss is not None and float(event.val_loss) <= float(event.best_val_loss):
                self.best_at = event.epoch
            if self.bar is None and event.epoch == event.n_epochs and event.best_val_loss is not None:
                # the last epoch is scored after the last step's line: its loss was never shown
                self.line(
                    f"stentrans: epoch {event.epoch} of {event.n_epochs}: val {event.val_loss:.4f}, "
                    f"best val {event.best_val_loss:.4f} ({self._best_at()})"
                )
        elif event.kind == "step" and self.total:
            self.done = min(self.done + 1, self.total)
            best = "-" if event.best_val_loss is None else f"{event.best_val_loss:.4f} ({self._best_at()})"
            if self.bar is not None:
                self.bar.update(1)
                last = {} if self.last_val is None else {"val": f"{self.last_val[1]:.4f}"}
                self.bar.set_postfix(epoch=event.epoch, loss=f"{event.train_loss:.4f}", **last, best_val=best)
                return
            tenth = self.done * 10 // self.total
            if tenth > self.reported and self.done < self.total:
                self.reported = tenth
                last = (
                    ""
                    if self.last_val is None
                    else f"val {self.last_val[1]:.4f} (epoch {self.last_val[0]}), "
                )
                self.line(
                    f"stentrans: training {self.done}/{self.total} steps ({self.done / self.total:.0%}), "
                    f"epoch {event.epoch}, loss {event.train_loss:.4f}, {last}best val {best}, "
                    f"{time.monotonic() - self.started:.0f} s"
                )
        elif event.kind in ("finished", "stopped"):
            if self.bar is not None and event.kind == "finished":  # early stopping ends before the last step
                self.bar.update(self.bar.total - self.bar.n)
            self.close()  # the bar's last state stays on screen; the line goes under it
            from .core.estimators.base import end_text

            self.line(f"stentrans: {end_text(event, elapsed=True)}")

    def stage(self, event) -> None:
        """The work before training: one line per stage (interactive: with a bar of its items)."""
        from .core.estimators.base import stage_text

        if event.step == 0 or self.stage_name != event.message:
            self.close_stage()
            self.stage_name = event.message
            if event.n_steps > 1 and self._interactive():
                from tqdm import tqdm

                self.stage_bar = tqdm(
                    total=event.n_steps,
                    desc=event.message,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=False,
                    mininterval=0,  # a stage has a few items, each worth showing
                )
            else:
                self.line(f"stentrans: {stage_text(event)}")
        if self.stage_bar is not None:
            self.stage_bar.update(event.step - self.stage_bar.n)
            if event.step >= event.n_steps:
                self.close_stage()
                self.line(f"stentrans: {stage_text(event)}")

    def close_stage(self) -> None:
        if self.stage_bar is not None:
            self.stage_bar.close()
            self.stage_bar = None
        self.stage_name = None

    def close(self) -> None:
        self.close_stage()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if _ProgressBar.active is self:
            _ProgressBar.active = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stentrans`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    from .core.errors import StentransError, TrainingStopped, WriteError

    handlers = {"info": cmd_info, "enhance": cmd_enhance, "evaluate": cmd_evaluate, "pretrain": cmd_pretrain}
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        previous = _handle_sigterm()
        try:
            code = handlers[args.command](args)
            sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
            return code
        except BrokenPipeError:
            # the reader left (``stentrans info SLIDE | head -1``): quiet, as Unix tools are. Python's
            # recipe: stdout to devnull, so the flush at exit does not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except StentransError as exc:
            print(f"stentrans: error: {_error_text(exc)}", file=sys.stderr)
            if argv is None and isinstance(exc, WriteError):
                # HDF5 cannot close a file whose writes failed (full disk): h5py's finalizers then
                # print pages of "Exception ignored" and can crash the interpreter at exit (exit 139).
                # The temporaries are removed and the message is out: leave without finalizers.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INPUT)
            return EXIT_INPUT
        except Terminated:
            print("stentrans: terminated; nothing was written", file=sys.stderr)
            return EXIT_TERMINATED
        except (KeyboardInterrupt, TrainingStopped):
            print("stentrans: interrupted; nothing was written", file=sys.stderr)
            return EXIT_INTERRUPT
        finally:
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)


def _error_text(exc: Exception) -> str:
    """An engine error in the CLI's words: a reference slide's starts ``--reference PATH:``."""
    from .core.errors import ReferenceSlideError

    if isinstance(exc, ReferenceSlideError):
        return f"--reference{'' if exc.name is None else ' ' + exc.name}: {exc.problem}"
    return str(exc)


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The engine's own warnings as one line ``stentrans: warning: ...``; others as usual."""
    if category.__module__.startswith("napari_stentrans"):
        text = f"stentrans: warning: {message}"
        if file is None and _ProgressBar.active is not None:
            _ProgressBar.active.line(text)  # clears the bar first: the warning never lands mid-bar
        else:
            print(text, file=sys.stderr if file is None else file)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, job schedulers): unwinds like Ctrl-C, so every writer
    removes its temporaries and keeps the previous output."""


def _handle_sigterm():
    """Turn SIGTERM into :class:`Terminated` (main thread only); the previous handler, or None."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
