"""Same-tissue reference slides (issue 13): the default's basis fitted with other slides' spots."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from helpers import block_sites, make_slide, one_error_line, run_cli
from napari_stentrans.core.errors import ConfigError, InputError
from napari_stentrans.core.reference import MIN_SHARED_GENES, fit_reference_basis
from napari_stentrans.core.slide import Slide

N_GENES = 80


def _slide(seed: int, n_genes: int = N_GENES, shape=(14, 16)) -> ad.AnnData:
    r, c = block_sites("square", *shape)
    return make_slide(r, c, "square", n_genes=n_genes, seed=seed)


def _shuffled_with_extras(adata: ad.AnnData, seed: int = 3) -> ad.AnnData:
    """The same slide with its genes in another order and 10 genes the slide lacks appended
    (without counts, so every spot keeps its depth)."""
    import scipy.sparse as sp

    order = np.random.default_rng(seed).permutation(adata.n_vars)
    extra = ad.AnnData(
        X=sp.csr_matrix((adata.n_obs, 10), dtype=adata.X.dtype),
        obs=adata.obs.copy(),
        var=adata.var.iloc[:10].set_axis([f"EXTRA{i}" for i in range(10)]),
    )
    out = ad.concat([adata[:, order], extra], axis=1, merge="first", uns_merge="first")
    out.obsm["spatial"] = adata.obsm["spatial"]
    out.uns["stentrans_lattice"] = adata.uns["stentrans_lattice"]
    return out


def _basis_genes(slide: Slide) -> np.ndarray:
    return slide.training_genes(2000, 0.1)


def test_genes_are_matched_by_name_whatever_their_order():
    slide = Slide.from_adata(_slide(0))
    reference = _slide(1)
    plain = fit_reference_basis(slide, _basis_genes(slide), [Slide.from_adata(reference)], 12)
    shuffled = fit_reference_basis(
        slide, _basis_genes(slide), [Slide.from_adata(_shuffled_with_extras(reference))], 12
    )
    assert plain.genes == shuffled.genes == tuple(slide.genes[_basis_genes(slide)])
    np.testing.assert_allclose(plain.components, shuffled.components, atol=1e-6)
    assert plain.n_left_out == shuffled.n_left_out == 0


def test_basis_genes_a_reference_lacks_are_left_out_and_still_enhanced():
    import napari_stentrans as st

    adata = _slide(0)
    reference = _slide(1)[:, 10:].copy()  # lacks G0..G9
    slide = Slide.from_adata(adata)
    basis = fit_reference_basis(slide, _basis_genes(slide), [Slide.from_adata(reference)], 12)
    assert basis.n_left_out == 10 and not {f"G{i}" for i in range(10)} & set(basis.genes)
    enhanced = st.enhance(adata, reference=[reference], reference_names=["ref"])
    assert {"G0", "G5"} <= set(enhanced.var_names)
    assert np.isfinite(enhanced.X.toarray() if hasattr(enhanced.X, "toarray") else enhanced.X).all()
    recorded = enhanced.uns["stentrans"]["model"]["reference"]
    assert int(recorded["n_basis_genes_left_out"]) == 10
    assert list(recorded["slides"]) == [
        f"ref (fingerprint {Slide.from_adata(reference).fingerprint}, {reference.n_obs} spots)"
    ]


def test_a_reference_changes_the_basis_and_the_estimate_but_not_the_choice():
    import napari_stentrans as st

    adata, reference = _slide(0), _slide(1, shape=(20, 22))
    slide = Slide.from_adata(adata)
    own = st.fit(slide)
    with_ref = st.fit(slide, reference=[reference])
    assert own.reference is None and with_ref.reference is not None
    # rank, smoothers and shrinkage are chosen on the slide's own pairs either way
    assert with_ref.params.describe() == own.params.describe()
    own_basis, ref_basis = own.basis(slide), with_ref.basis(slide)
    # the slide's own mean; other axes (the pooled slides' structure)
    np.testing.assert_allclose(ref_basis.mean, own_basis.mean, rtol=1e-5, atol=1e-6)
    rank = own.params.rank
    overlap = np.abs(own_basis.components[:, :rank].T @ ref_basis.components[:, :rank])
    assert overlap.min() < 0.99
    np.testing.assert_allclose(ref_basis.scores.mean(axis=0), 0.0, atol=1e-4)  # the slide's own centring
    x_own, x_ref = own.enhance(slide).X, with_ref.enhance(slide).X
    assert np.abs(x_own - x_ref).max() > 1e-3


def test_a_model_fitted_with_a_reference_is_not_saved(tmp_path):
    import napari_stentrans as st
    from napari_stentrans.core.errors import CheckpointError

    model = st.fit(_slide(0), reference=[_slide(1)])
    with pytest.raises(CheckpointError, match="reference slides"):
        model.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_reference_with_too_few_shared_genes_is_refused_and_nothing_is_written(tmp_path, capsys):
    slide_file, ref_file = tmp_path / "slide.h5ad", tmp_path / "other.h5ad"
    _slide(0).write_h5ad(slide_file)
    other = _slide(1)
    shared = MIN_SHARED_GENES - 1
    other.var_names = [f"G{i}" if i < shared else f"MOUSE{i}" for i in range(N_GENES)]
    other.write_h5ad(ref_file)
    before = {p: p.read_bytes() for p in (slide_file, ref_file)}
    out = tmp_path / "out.h5ad"
    code, _, err = run_cli(["enhance", slide_file, "-o", out, "--reference", ref_file, "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2
    assert str(ref_file) in line and f"shares only {shared} of the slide's {N_GENES} basis genes" in line
    assert "matched by name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5ad", "slide.h5ad"]
    assert all(p.read_bytes() == data for p, data in before.items())


def test_the_slide_itself_is_not_a_reference():
    import napari_stentrans as st

    adata = _slide(0)
    with pytest.raises(InputError, match="the slide being enhanced itself"):
        st.enhance(adata, reference=[adata.copy()])


def test_a_reference_applies_to_the_default_preset_only(tmp_path, capsys):
    import napari_stentrans as st

    with pytest.raises(ConfigError, match="reference"):
        st.fit(_slide(0), "transformer", reference=[_slide(1)], device="cpu")
    slide_file, ref_file = tmp_path / "slide.h5ad", tmp_path / "other.h5ad"
    _slide(0).write_h5ad(slide_file)
    _slide(1).write_h5ad(ref_file)
    for extra in (["--preset", "transformer"], ["--save-model", tmp_path / "m.safetensors"]):
        code, _, err = run_cli(
            ["enhance", slide_file, "-o", tmp_path / "o.h5ad", "--reference", ref_file, *extra], capsys
        )
        assert code == 2 and "--reference" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5ad", "slide.h5ad"]


def test_enhance_with_a_reference_from_the_command_line(tmp_path, capsys):
    slide_file, ref_file, out = tmp_path / "slide.h5ad", tmp_path / "other.h5ad", tmp_path / "out.h5ad"
    _slide(0).write_h5ad(slide_file)
    _slide(1).write_h5ad(ref_file)
    code, stdout, _ = run_cli(["enhance", slide_file, "-o", out, "--reference", ref_file, "--quiet"], capsys)
    assert code == 0
    assert f"1 reference slide(s): {ref_file}" in stdout
    recorded = ad.read_h5ad(out).uns["stentrans"]["model"]["reference"]
    fingerprint = Slide.from_adata(ad.read_h5ad(ref_file)).fingerprint
    assert fingerprint in str(recorded["slides"][0])


def test_evaluate_refuses_a_reference_holding_the_evaluated_slide_and_records_one():
    from napari_stentrans.core.evaluate import evaluate

    adata = _slide(0, shape=(16, 18))
    with pytest.raises(InputError, match="holds .* of the evaluated slide's spots"):
        evaluate(adata, "heldout", methods=("default",), reference=[adata.copy()], reference_names=["same"])
    # a copy under other barcodes is the same spots: refused as well
    renamed = adata.copy()
    renamed.obs_names = [f"x{i}" for i in range(renamed.n_obs)]
    with pytest.raises(InputError, match="renamed"):
        evaluate(adata, "heldout", methods=("default",), reference=[renamed], reference_names=["renamed"])
    report = evaluate(
        adata, "heldout", methods=("default", "linear"), reference=[_slide(1)], reference_names=["other"]
    )
    assert report["reference"][0].startswith("other (fingerprint ")
    assert report["methods"]["default"]["reference"] is True
    assert report["methods"]["linear"]["reference"] is False
