"""The "Train & enhance" widget's "Across slides" options (issue 13): a pretrained model file
(+ fine-tune epochs) and same-tissue reference slides, through the core functions the CLI uses."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import run_to_end
from napari_stentrans._napari import actions


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-stentrans", "Train & enhance")
    widget._device.value = "cpu"
    return widget


def test_reference_slides_shape_the_default_basis_in_the_widget(st_viewer, qtbot, tmp_path):
    from napari_stentrans.synthetic import synthetic_slide

    reference = tmp_path / "adjacent.h5ad"
    synthetic_slide("square", n_genes=300, seed=1).write_h5ad(reference)
    widget = _dock(st_viewer)
    widget._references.value = f"{reference}; "
    assert widget.across_slides()["references"] == (reference,)
    run_to_end(widget, qtbot)
    info = actions.slide(st_viewer)
    assert info.model.reference is not None and len(info.model.reference.slides) == 1
    assert str(reference) in info.model.reference.slides[0]
    assert "1 reference slide(s)" in widget._verdict.value
    recorded = info.enhanced.uns["stentrans"]["model"]["reference"]
    assert str(reference) in str(recorded["slides"][0])
    # the same estimate as the Python API with the same reference
    import anndata as ad

    import napari_stentrans as st

    slide = st.Slide.from_adata(info.adata)
    api = st.fit(slide, reference=[ad.read_h5ad(reference)], reference_names=[str(reference)])
    assert api.params.describe() == info.model.params.describe()
    np.testing.assert_allclose(api.basis(slide).components, info.model.basis(slide).components, atol=1e-6)


def test_reference_slides_with_a_learned_preset_or_a_model_file_are_refused(st_viewer, tmp_path):
    from napari_stentrans.synthetic import synthetic_slide

    reference = tmp_path / "adjacent.h5ad"
    synthetic_slide("square", n_genes=300, seed=1).write_h5ad(reference)
    widget = _dock(st_viewer)
    widget._references.value = str(reference)
    widget._preset.value = "transformer"
    with pytest.raises(ValueError, match="default preset"):
        actions.prepare_job(st_viewer, widget.config(), widget.slide_id, **widget.across_slides())
    assert widget.start() is None and widget.worker is None  # one notification, no run
    widget._preset.value = "default"
    widget._pretrained.value = reference  # any existing file: refused before it is read
    with pytest.raises(ValueError, match="do not apply with a model file"):
        actions.prepare_job(st_viewer, widget.config(), widget.slide_id, **widget.across_slides())
    assert actions.slide(st_viewer).model is None


def test_a_pretrained_model_file_is_judged_and_fine_tuned_on_the_slide(st_viewer, qtbot, tmp_path):
    import napari_stentrans as st
    from napari_stentrans.core.estimators.learned import LearnedModel
    from napari_stentrans.core.pretrain import is_classical_fallback
    from napari_stentrans.synthetic import synthetic_slide

    tiny = dict(epochs=1, n_train_genes=16, batch_size=8, depth=1, heads=2, patch_size=2, embed_dim=16)
    slides = [synthetic_slide("square", n_genes=60, seed=s) for s in (3, 4)]
    path = st.pretrain(slides, "transformer", device="cpu", names=["a", "b"], **tiny).save(
        tmp_path / "pre.safetensors"
    )
    widget = _dock(st_viewer)
    widget._pretrained.value = path
    widget._finetune.value = 1
    events = []
    worker = widget.start()
    worker.yielded.connect(events.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.idle, timeout=10_000)
    model = actions.slide(st_viewer).model
    assert widget._verdict.value.endswith("Model file: pre.safetensors.")
    kinds = [e.kind for e in events]
    assert kinds[0] == "stage" and "prepared" in kinds and kinds[-1] == "finished"
    assert [e.epoch for e in events if e.kind == "epoch"] == [1]  # the fine-tuning epoch ran
    if isinstance(model, LearnedModel):  # passed the slide's own gate
        assert len(model.pretrained_on) == 2
        assert model.validation["val_score"] > model.validation["default_val_score"]
        assert "pretrained correction (2 slides) improved" in widget._verdict.value
    else:  # the classical estimate, said plainly
        assert is_classical_fallback(model)
        assert "did not improve" in widget._verdict.value and "classical estimate" in widget._verdict.value


def test_a_refused_run_says_not_run_and_keeps_the_previous_verdict(st_viewer, qtbot, tmp_path):
    """New-user trial: a reference equal to the slide left "preparing the slide ... 1/1" and
    cleared the last verdict; the toast was cut at the reference's long path."""
    widget = _dock(st_viewer)
    run_to_end(widget, qtbot)
    verdict = widget._verdict.value
    assert verdict.startswith("Run 1")
    itself = tmp_path / "a" / "long" / "folder" / "same.h5ad"
    itself.parent.mkdir(parents=True)
    actions.slide(st_viewer).adata.write_h5ad(itself)
    widget._references.value = str(itself)
    run_to_end(widget, qtbot)
    status = widget._status.value
    assert status.startswith("not run: ") and "slide being enhanced itself" in status, status
    assert str(itself.parent) not in status and "same.h5ad" in status  # the reason, not the folder
    assert status.endswith("Nothing changed.")
    assert widget._verdict.value == verdict and widget._progress.value == 0
    assert actions.slide(st_viewer).runs == 1


def test_export_tab_names_the_model_and_reports_a_model_it_cannot_save(st_viewer, qtbot, tmp_path):
    from napari_stentrans.synthetic import synthetic_slide

    _, export = st_viewer.window.add_plugin_dock_widget("napari-stentrans", "Enhance & export")
    assert export._status.value == "train or load a model, then export"
    reference = tmp_path / "adjacent.h5ad"
    synthetic_slide("square", n_genes=300, seed=1).write_h5ad(reference)
    widget = _dock(st_viewer)
    widget._references.value = str(reference)
    run_to_end(widget, qtbot)
    assert export._status.value.startswith("ready: run 1 (")
    target = tmp_path / "model.safetensors"
    export.save_model(target)  # a model fitted with references belongs to them: not saved
    assert export._status.value.startswith("model not saved: ") and not target.exists()
    export._describe_model()  # a layer added later (its handler) keeps the last action's message
    assert export._status.value.startswith("model not saved: ")
    # an export that cannot start says why in the panel, not only in a toast
    export._which.value, export._chosen.value = "chosen", "NOPE"
    assert export.export(tmp_path / "x.h5ad") is None and not (tmp_path / "x.h5ad").exists()
    assert export._status.value == "not exported: 1 chosen gene(s) not in the slide: 'NOPE'"
    export.load_model(tmp_path / "absent.safetensors")
    assert export._status.value.startswith("model not loaded: ")
