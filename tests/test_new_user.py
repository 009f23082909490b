"""What a new user meets first: options checked before any work, short reprs, hole filling they
can switch off, the README's Python example (issue 15, kind 8)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import TINY_OPTIONS, block_sites, fit_cpu, fit_network, make_slide, tiny_config
from napari_stentrans.core.errors import ConfigError, InputError
from napari_stentrans.core.fitting import enhance
from napari_stentrans.core.sites import output_sites
from napari_stentrans.core.slide import ImputedSitesWarning, Slide

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def hex_slide():
    r, c = block_sites("hex", 10, 16)
    return make_slide(r, c, "hex")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"genes": ["G1", "Nope"]}, InputError, "1 requested gene\\(s\\) not in the slide, e.g. 'Nope'"),
        ({"genes": 0}, InputError, "number of genes must be positive"),
        ({"measured": "raw"}, ConfigError, "measured: 'raw' is not allowed"),
        ({"device": "tpu"}, ConfigError, "device: 'tpu' is not allowed"),
        ({"fill_holes": "yes"}, InputError, "fill_holes: 'yes' is not allowed"),
        ({"epochs": -1}, ConfigError, "epochs: -1 is not allowed"),
    ],
)
def test_api_enhance_checks_every_option_before_any_training(hex_slide, options, error, message):
    events = []  # a typo in a gene name cost a user 3 min 44 s of training before this
    with pytest.raises(error, match=message):
        enhance(hex_slide, config="transformer", callback=events.append, **{**TINY_OPTIONS, **options})
    assert events == []


def test_a_path_or_an_array_given_for_the_slide_says_to_read_it_first(hex_slide, tmp_path):
    """`st.enhance("Vis5A_2dpi/")` failed with AttributeError: 'str' object has no attribute 'uns'
    (the CLI and st.read take paths, so the mistake is easy)."""
    import napari_stentrans as st

    folder = str(tmp_path / "Vis5A_2dpi")
    (tmp_path / "Vis5A_2dpi").mkdir()
    model = fit_cpu(hex_slide, tiny_config())
    calls = (
        lambda data: st.enhance(data),
        lambda data: st.fit(data),
        lambda data: model.enhance(data),
        lambda data: st.evaluate(data, methods=("linear",)),
    )
    for call in calls:
        with pytest.raises(
            InputError, match=re.escape(f"the path {folder!r}: read it first, st.read({folder!r})")
        ):
            call(folder)
        with pytest.raises(InputError, match=r"got ndarray: read a slide with st\.read\(path\)"):
            call(np.zeros((3, 3)))
        with pytest.raises(InputError, match="got Path|the path"):
            call(Path(folder))
        with pytest.raises(InputError, match="got the path 'no/such.h5ad', which does not exist$"):
            call("no/such.h5ad")


def test_fitted_models_slides_and_streamed_results_have_short_reprs(hex_slide, tmp_path):
    learned = fit_network(hex_slide, tiny_config("hex"))  # a network, kept whatever the gate says
    classical = fit_cpu(hex_slide, "default")
    written = classical.write(hex_slide, tmp_path / "out.h5ad", device="cpu")
    for obj in (learned, classical, written, Slide.from_adata(hex_slide)):
        text = repr(obj)
        assert len(text) < 400, text  # the streamed result once printed a whole state dict
        assert "tensor(" not in text and "array(" not in text and "\n" not in text, text
    assert "transformer" in repr(learned) and "hex" in repr(learned)
    # a kept network was trained on its genes; the classical estimate trained nothing
    assert learned.uses_network and "16 training genes" in repr(learned)
    assert " basis genes" in repr(classical) and "training genes" not in repr(classical)
    assert str(tmp_path / "out.h5ad") in repr(written)


def _with_zero_count_spot(adata: ad.AnnData, index: int) -> ad.AnnData:
    x = adata.X.toarray()
    x[index] = 0
    adata = adata.copy()
    adata.X = sp.csr_matrix(x)
    return adata


def test_a_measured_spot_without_counts_is_imputed_even_on_the_tissue_edge(hex_slide):
    edge = int(np.flatnonzero(hex_slide.obs["array_row"].to_numpy() == 0)[3])
    for fill_holes in ("auto", True, False):
        sites = output_sites(Slide.from_adata(_with_zero_count_spot(hex_slide, edge), fill_holes=fill_holes))
        imputed = sites.spot[sites.kind == "imputed"]
        assert imputed.tolist() == [edge], fill_holes  # kept, under its barcode, never dropped


def _enclosed_case(tmp_path, tissue_mask: bool):
    """A hex slide with a lumen of 7 unmeasured sites in its middle, as a Space Ranger folder
    (its positions file marks the lumen in_tissue = 0) or as an .h5ad (no tissue mask)."""
    from helpers import write_spaceranger
    from napari_stentrans.core.io import read

    r, c = block_sites("hex", 12, 24)
    lumen = np.hypot((r - 6) * np.sqrt(3) / 2, (c - 12) * 0.5) <= 1.01  # a site and its 6 neighbours
    adata = make_slide(r[~lumen], c[~lumen], "hex")
    if not tissue_mask:
        adata.write_h5ad(tmp_path / "slide.h5ad")
        return read(tmp_path / "slide.h5ad"), int(lumen.sum())
    # the helper's positions list one more site in tissue without counts, far away (40, 40)
    write_spaceranger(tmp_path / "sr", adata, matrix="h5", positions="v1")
    positions = tmp_path / "sr" / "spatial" / "tissue_positions_list.csv"
    with open(positions, "a") as fh:  # the lumen: listed, outside the tissue
        for i, (row, col) in enumerate(zip(r[lumen], c[lumen], strict=True)):
            fh.write(f"LUMEN{i}-1,0,{row},{col},{100 + row * 10},{100 + col * 10}\n")
    return read(tmp_path / "sr"), int(lumen.sum())


@pytest.mark.parametrize("tissue_mask", [True, False])
def test_enclosed_sites_outside_the_tissue_mask_are_filled_only_when_asked(tmp_path, tissue_mask):
    adata, n_lumen = _enclosed_case(tmp_path, tissue_mask)
    assert n_lumen == 7
    counts = {
        fill: int((output_sites(Slide.from_adata(adata, fill_holes=fill)).kind == "imputed").sum())
        for fill in ("auto", True, False)
    }
    # a positions file says the lumen is not tissue: "auto" leaves it empty (and imputes the site
    # it marks in tissue without counts); without a tissue mask an enclosed gap is the only sign
    # of lost spots, so "auto" fills it
    in_tissue_empty = 1 if tissue_mask else 0
    assert counts == {
        "auto": in_tissue_empty if tissue_mask else n_lumen,
        True: n_lumen + in_tissue_empty,
        False: 0,
    }


def test_visium_tiny_warns_of_its_imputed_sites_and_they_can_be_left_out(shared_data, tmp_path, capsys):
    from napari_stentrans.cli import main
    from napari_stentrans.core.io import read

    path = shared_data / "visium_tiny_scanpy_testdata"
    adata = read(path)
    with warnings.catch_warnings():  # no numpy noise in the user's terminal (sqrt of -1e-17 once)
        warnings.simplefilter("error", RuntimeWarning)
        model = fit_cpu(adata, "default")
    with pytest.warns(ImputedSitesWarning, match="4135 sites are imputed against 100 measured spots") as seen:
        out = model.enhance(adata, genes=3, device="cpu")
    # every one of them is in tissue without counts: no "rest" enclosed by tissue, nothing lost
    assert "(4135 marked in tissue without counts): most of the output" in str(seen[0].message)
    assert (out.obs["kind"] == "imputed").sum() == 4135  # in tissue without counts (positions file)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImputedSitesWarning)
        sites = output_sites(Slide.from_adata(adata, fill_holes=False))
    assert (sites.kind == "imputed").sum() == 0 and (sites.kind == "measured").sum() == 100
    code = main(["enhance", str(path), "-o", str(tmp_path / "o.h5ad"), "--genes", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "stentrans: warning: 4135 sites are imputed" in err and "Warning:" not in err
    code = main(["enhance", str(path), "-o", str(tmp_path / "p.h5ad"), "--genes", "3", "--no-fill-holes"])
    assert code == 0 and "warning" not in capsys.readouterr().err
    assert (ad.read_h5ad(tmp_path / "p.h5ad").obs["kind"] == "imputed").sum() == 0


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_installs_from_source_and_names_no_missing_package():
    text = README.read_text()
    # napari-stentrans is not on PyPI: no `pip install napari-stentrans...`, only source installs
    assert not re.search(r"pip install\s+[\"']?napari-stentrans", text)
    installs = re.findall(r"pip install ([^`\n]*)", text)
    assert any(i.startswith(".") or i.startswith('".[') for i in installs), installs
    assert "not on PyPI" in text
    # the two fresh-machine commands stay the README's first commands
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1)
    assert [line.split()[:2] for line in first_block.splitlines() if line.startswith("make")] == [
        ["make", "demo"],
        ["make", "test"],
    ]


def _small(adata: ad.AnnData, keep: tuple[str, ...] = ("Myh3", "Actc1"), n_genes: int = 150) -> ad.AnnData:
    """The slide with its ``n_genes`` most detected genes (and ``keep``): the README's example in seconds."""
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    top = set(adata.var_names[np.argsort(-detected)[:n_genes]]) | set(keep)
    return adata[:, adata.var_names.isin(top)].copy()


@pytest.mark.slow  # two real Visium slides read whole, four fits: about 10 s
def test_readme_python_example_runs(shared_data, tmp_path, monkeypatch):
    """The README's first Python block, run as written on the slide it names (Vis7B), with its
    150 most detected genes, shorter training and paths changed only."""
    block = _readme_python_blocks()[0]
    muscle = shared_data / "visium_mouse_muscle_mckellar2021"
    code = (
        block.replace('st.read("Vis7B_5dpi/")', f"_small(st.read({str(muscle / 'Vis7B_5dpi')!r}))")
        .replace('st.read("other_slide/")', f"_small(st.read({str(muscle / 'Vis5A_2dpi')!r}))")
        .replace("epochs=20", "epochs=1, n_train_genes=16")
        .replace("epochs=5", "epochs=1, n_train_genes=16")
    )
    assert "lost_sites" in code and code.count("epochs=1") == 2 and code.count("_small(") == 2
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        namespace: dict = {"_small": _small}
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    enhanced = namespace["enhanced"]
    assert enhanced.n_obs > 1011 and (tmp_path / "enhanced.h5ad").is_file()
    assert (tmp_path / "all_genes.h5ad").is_file() and (tmp_path / "model.safetensors").is_file()
    assert namespace["config"].network.patch_size == 2


def _slide_with_image(tmp_path):
    """A hex slide whose image is turned 180 degrees from its array axes (as Vis7B's), with an H&E."""
    from napari_stentrans.core.lattice import Lattice

    r, c = block_sites("hex", 10, 16)
    adata = make_slide(r, c, "hex")
    physical = Lattice("hex").physical(r, c)
    adata.obsm["spatial"] = 2000.0 - physical * 2.0  # 2 px per um, both axes reversed
    image = np.zeros((500, 500, 3), dtype=np.uint8)
    image[..., 1] = 200  # a green no colour map draws: where the PNG shows it, the H&E is seen
    adata.uns["spatial"] = {
        "lib": {"images": {"lowres": image}, "scalefactors": {"tissue_lowres_scalef": 0.25}}
    }
    adata.write_h5ad(tmp_path / "imaged.h5ad")
    return tmp_path / "imaged.h5ad"


def test_plot_draws_every_named_gene_as_the_image_shows_the_slide(tmp_path, capsys):
    from PIL import Image

    from napari_stentrans.cli import main
    from napari_stentrans.core.io import read
    from napari_stentrans.core.plotting import DPI, MAX_GENES, TITLE_INCHES, panel_height, plot_frame

    path = _slide_with_image(tmp_path)
    adata = read(path)
    out = fit_cpu(adata, "default").enhance(adata, genes=["G1", "G2"], device="cpu")
    frame = plot_frame(adata, out)
    assert frame.units == "px" and frame.image is not None
    np.testing.assert_allclose(frame.xy_in, adata.obsm["spatial"])  # image orientation, not array
    assert frame.pitch == pytest.approx(200.0)  # 100 um at 2 px per um
    assert frame.extent == pytest.approx((-2.0, 1998.0, 1998.0, -2.0))  # lowres at 0.25: 4 px per pixel
    measured = out.obs["kind"].to_numpy() == "measured"
    np.testing.assert_allclose(out.obsm["spatial"][measured][:3], adata.obsm["spatial"][:3], atol=1e-6)

    genes = ["G1", "G2", "G3", "G4"]  # a fourth gene was dropped silently before
    code = main(["enhance", str(path), "-o", str(tmp_path / "o.h5ad"), "--genes", ",".join(genes), "--plot",
                 str(tmp_path / "p.png"), "--quiet"])  # fmt: skip
    assert code == 0
    png = Image.open(tmp_path / "p.png").convert("RGB")
    # one row per gene under a row with the H&E alone: the gene maps' cells tile it and hide it
    assert abs(png.height - (len(genes) + 1) * (panel_height(frame) + TITLE_INCHES) * DPI) <= 1
    pixels = np.asarray(png).reshape(-1, 3).astype(int)
    green = (pixels[:, 1] > 150) & (pixels[:, 0] < 60) & (pixels[:, 2] < 60)
    assert green.sum() > 0.05 * len(pixels)
    many = [f"G{i}" for i in range(MAX_GENES + 2)]
    code = main(["enhance", str(path), "-o", str(tmp_path / "m.h5ad"), "--genes", ",".join(many), "--plot",
                 str(tmp_path / "m.png"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and f"--plot shows the first {MAX_GENES} of the {MAX_GENES + 2} genes given" in err
    assert f"left out: G{MAX_GENES}, G{MAX_GENES + 1}" in err


def test_a_near_empty_spot_is_imputed_from_its_neighbours_not_blown_up(hex_slide):
    """A spot with 3 counts (all in one gene) read as 7,500 per 10k of it: it became the hottest
    spot on the slide (olfactory bulb: 4 counts, Apod 46 against 12.5 around it)."""
    r = hex_slide.obs["array_row"].to_numpy()
    c = hex_slide.obs["array_col"].to_numpy()
    spot = int(np.argmin(np.hypot((r - 5) * np.sqrt(3) / 2, (c - 8) * 0.5)))
    x = hex_slide.X.toarray() * 20  # a slide of ~2,000 counts a spot
    gene = int(np.argmin(x.sum(axis=0)))  # its 3 counts in the slide's rarest gene
    x[spot] = 0
    x[spot, gene] = 3
    adata = hex_slide.copy()
    adata.X = sp.csr_matrix(x)
    assert 0 < x[spot].sum() < 0.005 * np.median(x.sum(axis=1))
    out = enhance(adata, config="default", device="cpu")
    row = out.obs_names.get_loc(adata.obs_names[spot])
    assert out.obs["kind"].iloc[row] == "imputed"
    distance = np.hypot(  # output coordinates are doubled: one input pitch is 4 array_col
        (out.obs["array_row"] - 2 * r[spot]) * np.sqrt(3) / 4, (out.obs["array_col"] - 2 * c[spot]) / 4
    )
    ring = (out.obs["kind"].to_numpy() == "measured") & (distance > 0) & (distance < 1.01)
    assert ring.sum() == 6
    ring_values = np.asarray(out.X)[ring, gene]
    assert ring_values.min() * 0.5 <= np.asarray(out.X)[row, gene] <= ring_values.max() * 1.5
    assert out.layers["measured"][row, gene] == 3  # what was measured is kept


def test_requested_genes_are_written_in_the_order_asked(hex_slide, tmp_path):
    """``--genes Myh3,Actc1,Spp1`` was written in the slide's order (Actc1, Spp1, Myh3)."""
    from napari_stentrans.core.fitting import fit

    asked = ["G7", "G2", "G11", "G2", "G0"]
    out = enhance(hex_slide, config="default", device="cpu", genes=asked)
    assert out.var_names.tolist() == ["G7", "G2", "G11", "G0"]
    names = hex_slide.var_names.tolist()
    rows = [out.obs_names.get_loc(b) for b in hex_slide.obs_names]
    expected = hex_slide.X.toarray()[:, [names.index(g) for g in ["G7", "G2", "G11", "G0"]]]
    np.testing.assert_array_equal(out.layers["measured"][rows].toarray(), expected)
    written = fit(hex_slide, "default", device="cpu").write(hex_slide, tmp_path / "o.h5ad", genes=asked)
    assert ad.read_h5ad(tmp_path / "o.h5ad").var_names.tolist() == ["G7", "G2", "G11", "G0"]
    assert written.uns["patterns"]["n_genes"] == 4


def _with_ensembl_ids(adata: ad.AnnData, column: str = "symbol") -> ad.AnnData:
    """var_names as Ensembl-like ids, symbols in a column (scanpy / cellxgene style)."""
    adata = adata.copy()
    symbols = [f"Sym{i}" for i in range(adata.n_vars)]
    symbols[5] = "Sym4"  # one symbol shared by two genes, as happens with real annotations
    adata.var_names = [f"ENSMUSG{i:011d}" for i in range(adata.n_vars)]
    adata.var[column] = symbols
    adata.var["feature_types"] = "Gene Expression"
    adata.var["gene_ids"] = adata.var_names.to_numpy()
    return adata


@pytest.mark.parametrize("column", ["symbol", "gene_symbols", "gene_name", "feature_name"])
def test_genes_are_asked_for_by_symbol_and_annotations_are_kept(hex_slide, tmp_path, column):
    """``--genes Spp1,Myh3`` on an .h5ad with Ensembl var_names failed with "not in the slide",
    and the output's var kept only training_gene."""
    from napari_stentrans.core.fitting import fit

    adata = _with_ensembl_ids(hex_slide, column)
    adata.write_h5ad(tmp_path / "ids.h5ad")
    adata = ad.read_h5ad(tmp_path / "ids.h5ad")
    asked = ["Sym7", "ENSMUSG00000000002", "Sym3"]  # symbols and ids mixed, in this order
    out = enhance(adata, config="default", device="cpu", genes=asked)
    ids = ["ENSMUSG00000000007", "ENSMUSG00000000002", "ENSMUSG00000000003"]
    assert out.var_names.tolist() == ids
    assert out.var[column].tolist() == ["Sym7", "Sym2", "Sym3"]
    assert out.var["gene_ids"].tolist() == ids and set(out.var["feature_types"]) == {"Gene Expression"}
    assert "training_gene" in out.var.columns
    fit(adata, "default", device="cpu").write(adata, tmp_path / "o.h5ad", genes=asked)
    written = ad.read_h5ad(tmp_path / "o.h5ad")
    assert written.var_names.tolist() == ids and written.var[column].tolist() == ["Sym7", "Sym2", "Sym3"]
    with pytest.raises(
        InputError, match="'Sym4' is the symbol of 2 genes .*ENSMUSG00000000004, ENSMUSG00000000005"
    ):
        enhance(adata, config="default", device="cpu", genes=["Sym4"])
    with pytest.raises(InputError, match="1 requested gene\\(s\\) not in the slide, e.g. 'Nope'"):
        enhance(adata, config="default", device="cpu", genes=["Sym1", "Nope"])


def test_an_anndata_of_log_values_is_refused_or_its_counts_are_found(hex_slide):
    """scanpy's normalise + log leaves log values in X: the Python API enhanced them as counts
    (a new-user trial; `read` and the CLI switch to adata.raw or refuse). Now it does as `read`."""
    import napari_stentrans as st
    from napari_stentrans.core.io import CountsFromRawWarning

    counts = sp.csr_matrix(hex_slide.X, dtype=np.float32)
    depth = np.asarray(counts.sum(axis=1))
    logged = hex_slide.copy()
    logged.X = sp.csr_matrix(np.log1p(counts.multiply(1e4 / depth)).toarray())
    with pytest.raises(InputError, match=r"adata\.X has non-integer values \(e\.g\. [0-9.]+: normalised"):
        st.fit(logged, min_detection=0.0)
    # scanpy's tutorial keeps the log values in adata.raw too: say so, not "store them in adata.raw"
    tutorial = logged.copy()
    tutorial.raw = logged
    with pytest.raises(InputError, match=r"or adata\.raw\); adata\.raw hold(s)? non-integer values too$"):
        st.fit(tutorial, min_detection=0.0)
    nearly = hex_slide.copy()
    nearly.X = counts.toarray() + 1e-5
    with pytest.raises(InputError, match=r"\(e\.g\. \d+\.0000\d+: normalised"):  # not "e.g. 2"
        st.fit(nearly, min_detection=0.0)
    reference = st.fit(hex_slide, min_detection=0.0).enhance(hex_slide)
    with_raw = logged.copy()
    with_raw.raw = hex_slide
    with pytest.warns(CountsFromRawWarning, match="using the integer counts in adata.raw"):
        from_raw = st.fit(with_raw, min_detection=0.0).enhance(with_raw)
    in_layer = logged.copy()
    in_layer.layers["counts"] = counts
    from_layer = st.fit(in_layer, min_detection=0.0).enhance(in_layer)
    for out in (from_raw, from_layer):  # the same enhancement as from the counts themselves
        np.testing.assert_allclose(np.asarray(out.X), np.asarray(reference.X), rtol=1e-5, atol=1e-4)
    assert logged.X.max() < 20  # the caller's AnnData is not changed
    broken = hex_slide.copy()
    broken.X = counts.toarray()
    broken.X[3, 2] = np.nan
    with pytest.raises(InputError, match=r"adata\.X contains NaN or infinite values \(1 entry\)"):
        st.fit(broken, min_detection=0.0)
    broken.X[3, 2] = -2
    with pytest.raises(InputError, match=r"adata\.X contains negative values \(min -2\)"):
        st.evaluate(broken, methods=("linear",))
