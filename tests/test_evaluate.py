"""Honest evaluation: splits never leak the scored spots; the report has the promised shape."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from helpers import block_sites, make_slide, run_cli, two_layer_slide
from napari_stentrans.cli import main
from napari_stentrans.core.evaluate import evaluate, make_split, pearson_per_gene


@pytest.fixture(scope="module")
def hex_slide():
    r, c = block_sites("hex", 20, 36)
    return make_slide(r, c, "hex", n_genes=30, seed=5)


def test_heldout_split_shows_only_the_lattice_preserving_coset(hex_slide):
    split = make_split(hex_slide, "heldout", min_detection=0.0)
    rows, cols = hex_slide.obs["array_row"].to_numpy(), hex_slide.obs["array_col"].to_numpy()
    kept = (rows % 2 == 0) & ((cols - rows) % 4 == 0)
    assert split.known.n_obs == kept.sum()
    assert set(split.known.obs_names) == set(hex_slide.obs_names[kept])
    # the known slide is again hexagonal, in its own (coarse) coordinates
    assert ((split.known.obs["array_row"] + split.known.obs["array_col"]) % 2 == 0).all()
    # scored spots are exactly held-out spots; their half-pitch coordinates are the originals
    scored = set(zip(split.target_rows.tolist(), split.target_cols.tolist(), strict=True))
    assert scored <= set(zip(rows[~kept].tolist(), cols[~kept].tolist(), strict=True))
    assert not scored & set(zip(rows[kept].tolist(), cols[kept].tolist(), strict=True))
    assert split.train_on is split.known


def test_lost_split_hides_contiguous_blobs_of_about_ten_percent(hex_slide):
    split = make_split(hex_slide, "lost", seed=1, min_detection=0.0)
    n_hidden = len(split.mask)
    assert abs(n_hidden - 0.1 * hex_slide.n_obs) <= 1
    assert split.known is hex_slide and split.mask is not None
    np.testing.assert_array_equal(np.sort(split.target_rows // 2), np.sort(split.target_rows) // 2)


def test_pearson_per_gene_marks_constant_genes():
    truth = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    r = pearson_per_gene(truth * 2 + 1, truth)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])


def test_report_shape_and_methods(hex_slide):
    methods = ("default", "linear", "lowrank_linear", "lowrank_kernel")
    # the default preset's former name is accepted and reported under the preset's name
    asked = ("stentrans", *methods[1:])
    report = evaluate(hex_slide, "heldout", methods=asked, epochs=1, device="cpu", dataset="hex")
    assert {"dataset", "protocol", "n_genes", "n_heldout_spots", "methods"} <= set(report)
    assert list(report["methods"]) == list(methods)
    for name in methods:
        m = report["methods"][name]
        assert {"median_pcc", "mean_pcc", "median_pcc_norm", "n_genes_scored", "seconds", "rmse_norm"} <= set(
            m
        )
        assert -1 <= m["median_pcc"] <= 1 and m["n_genes_scored"] + m["n_genes_excluded"] == report["n_genes"]
        assert len(m["pcc"]) == report["n_genes"]
    assert all("note" not in report["methods"][name] for name in methods)  # nothing to explain


def test_a_learned_preset_whose_network_is_not_kept_says_why_in_the_report(hex_slide):
    from napari_stentrans.core.estimators.learned import NOT_KEPT, NOTHING_LEARNED

    report = evaluate(hex_slide, "heldout", methods=("default", "transformer"), epochs=1, device="cpu")
    default, transformer = report["methods"]["default"], report["methods"]["transformer"]
    assert transformer["note"] in (NOT_KEPT, NOTHING_LEARNED)  # this seed: the gate refuses
    assert transformer["pcc"] == default["pcc"]  # and the result is exactly the default's


def test_evaluate_command_prints_why_a_learned_preset_equals_the_default(hex_slide, tmp_path, capsys):
    """Two identical rows with no word of why read as a bug: the JSON's note is printed too."""
    from napari_stentrans.core.estimators.learned import NOT_KEPT, NOTHING_LEARNED

    hex_slide.write_h5ad(tmp_path / "s.h5ad")
    args = ["evaluate", str(tmp_path / "s.h5ad"), "--methods", "default,transformer", "--epochs", "1"]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    note = json.loads((tmp_path / "r.json").read_text())["methods"]["transformer"]["note"]
    assert note in (NOT_KEPT, NOTHING_LEARNED) and f"note: transformer: {note}" in out
    assert "note: default" not in out  # nothing to explain there


def test_borrowing_strength_across_genes_beats_interpolation_on_shared_domains():
    from napari_stentrans.synthetic import synthetic_slide

    slide = synthetic_slide("square", n_genes=60, seed=0, with_truth=False)  # genes share tissue domains
    report = evaluate(slide, "heldout", methods=("linear", "lowrank_linear", "lowrank_kernel"), dataset="s")
    scores = {m: s["median_pcc"] for m, s in report["methods"].items()}
    assert scores["lowrank_linear"] > scores["linear"] and scores["lowrank_kernel"] > scores["linear"]


def test_evaluate_command_writes_json_and_plot(hex_slide, tmp_path, capsys):
    hex_slide.write_h5ad(tmp_path / "s.h5ad")
    code = main(
        [
            "evaluate",
            str(tmp_path / "s.h5ad"),
            "--protocol",
            "lost",
            "--methods",
            "nearest,linear",
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "linear" in out and "lost:" in out
    report = json.loads((tmp_path / "r.json").read_text())
    # held-out spots outside the seen spots' hull are counted, not silently missing
    split = make_split(hex_slide, "lost", seed=0)
    assert report["n_outside_spots"] == split.n_outside
    assert report["n_heldout_spots"] + split.n_outside == int(split.mask.shape[0])
    said = f"lost: {report['n_heldout_spots']} scored spots"
    assert said + (f" ({split.n_outside} more held out outside" if split.n_outside else ",") in out
    held = make_split(hex_slide, "heldout", seed=0)  # a coset: some of it lies on the rim
    assert held.n_outside > 0
    assert len(held.target_rows) + held.n_outside == hex_slide.n_obs - held.known.n_obs
    code, printed, _ = run_cli(["evaluate", tmp_path / "s.h5ad", "--methods", "nearest"], capsys)
    said = f"heldout: {len(held.target_rows)} scored spots ({held.n_outside} more held out outside the seen "
    assert code == 0 and said in printed
    assert report["protocol"] == "lost" and set(report["methods"]) == {"nearest", "linear"}
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # per-gene gene-specific r for the plot's second panel: one value per reported gene
    assert len(report["methods"]["linear"]["gene_specific_pcc"]) == len(report["spatial_genes"])
    assert "gene-specific r" in out and "measured (truth)" in out
    # the truth's PC1 share and effective rank without its Poisson noise: a row of their own
    noise_free = next(x for x in out.splitlines() if x.startswith(" without Poisson noise"))
    measured = next(x for x in out.splitlines() if x.startswith("measured (truth)"))
    # its numbers end where the measured truth's do (the label overran its column by one)
    assert measured.index(f"{report['truth']['effective_rank']:.1f}") + len(
        f"{report['truth']['effective_rank']:.1f}"
    ) == len(noise_free)
    assert "without Poisson noise: the truth's PC1 share and effective rank by count splitting" in out
    truth = report["truth"]
    assert noise_free.split()[-2:] == [
        f"{truth['signal_pc1_share']:.2f}",
        f"{truth['signal_effective_rank']:.1f}",
    ]
    # its gene count is over the spots the methods see, not info's over all spots: it says so
    assert f"{report['n_genes']} genes (detected in >= 10% of the spots the methods see" in out
    assert {
        "gene_specific_r",
        "coexpression_r",
        "coexpression_r_signal",
        "pc1_share",
        "effective_rank",
    } <= set(report["methods"]["linear"])
    # the signal column, and one line saying what it is and whether this split can judge it
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.index("co-expr r") < header.index("(signal)") < header.index("PC1 share")
    reliability = report["truth"]["signal_coexpression_reliability"]
    assert any(line.startswith("(signal): co-expression r against the truth's") for line in out.splitlines())
    if reliability is None:
        assert "(signal) not judged here" in out
    else:
        assert (
            f"(signal) here: two halves of the scored spots agree on those correlations at r = {reliability:.2f}"
            in out
        )


def test_evaluate_command_reads_labels_from_a_csv(tmp_path, capsys):
    import pandas as pd

    hex_slide = two_layer_slide()
    hex_slide.write_h5ad(tmp_path / "s.h5ad")
    cols = hex_slide.obs["array_col"].to_numpy()
    pd.DataFrame({"barcode": hex_slide.obs_names, "layer": np.where(cols < 18, "A", "B")}).to_csv(
        tmp_path / "layers.csv", index=False
    )
    args = ["evaluate", str(tmp_path / "s.h5ad"), "--methods", "linear", "--json", str(tmp_path / "r.json")]
    assert main([*args, "--labels", str(tmp_path / "layers.csv")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert "ARI" in out and 0.5 < report["methods"]["linear"]["ari"] <= 1 and "ari" in report["truth"]
    assert main([*args, "--labels", "no_such_column", "--overwrite"]) == 2
    assert "--labels: 'no_such_column' is neither an obs column" in capsys.readouterr().err


def test_paper_protocol_is_the_leaky_one_and_says_so(hex_slide):
    heldout = make_split(hex_slide, "heldout", min_detection=0.0)
    paper = make_split(hex_slide, "paper", min_detection=0.0)
    assert paper.train_on is hex_slide  # trained on the full slide: the scored spots were targets
    np.testing.assert_array_equal(paper.target_rows, heldout.target_rows)
    report = evaluate(hex_slide, "paper", methods=("linear",), dataset="hex")
    assert "leaky" in report["warning"]
    with pytest.raises(ValueError, match="protocol: 'honest-ish' is not allowed"):
        make_split(hex_slide, "honest-ish")


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_heldout_seeds_hold_out_each_coset_with_consistent_half_pitch_coordinates(kind):
    """Seed s keeps coset s % 4; known spots (2r', 2c') and targets share one half-pitch frame."""
    from napari_stentrans.core.lattice import Lattice

    r, c = block_sites(kind, 12, 16)
    slide = make_slide(r, c, kind, n_genes=10, seed=1)
    lattice = Lattice(kind)
    full = {name: (row, col) for name, row, col in zip(slide.obs_names, r, c, strict=True)}
    kept_by_seed = []
    for seed in range(4):
        split = make_split(slide, "heldout", seed=seed, min_detection=0.0)
        known = split.known
        half_known = np.column_stack([2 * known.obs["array_row"], 2 * known.obs["array_col"]])
        original = np.array([full[n] for n in known.obs_names])
        shift = half_known - original  # one constant shift maps the slide onto the half-pitch frame
        assert (shift == shift[0]).all()
        assert lattice.contains(split.target_rows, split.target_cols).all()
        # the targets' half-pitch positions are the held-out spots' positions in the same frame
        xy_targets = lattice.physical(split.target_rows - shift[0, 0], split.target_cols - shift[0, 1])
        np.testing.assert_allclose(xy_targets / lattice.pitch_um, split.target_xy, atol=1e-9)
        kept_by_seed.append(set(known.obs_names))
    assert sum(len(k) for k in kept_by_seed) == slide.n_obs and set().union(*kept_by_seed) == set(
        slide.obs_names
    )


def test_a_labels_table_without_header_keeps_its_first_spot(tmp_path):
    from napari_stentrans.core.errors import ReadError
    from napari_stentrans.core.io.labels import read_labels

    obs_names = pd.Index(["AAA-1", "CCC-1", "GGG-1"])
    (tmp_path / "plain.csv").write_text("AAA-1,L1\nCCC-1,L2\n")
    (tmp_path / "header.csv").write_text("barcode,layer\nAAA-1,L1\nCCC-1,L2\n")
    for name in ("plain.csv", "header.csv"):
        np.testing.assert_array_equal(read_labels(tmp_path / name, obs_names), ["L1", "L2", "nan"])
    (tmp_path / "other.csv").write_text("barcode,layer\nTTT-1,L1\n")
    with pytest.raises(ReadError, match="other.csv: needs barcode,label columns"):
        read_labels(tmp_path / "other.csv", obs_names)


def test_a_legacy_st_labels_table_is_matched_by_rounded_array_coordinates(tmp_path):
    """her2st's ``*_labeled_coordinates.tsv`` keys labels by pixel ids and adjusted x,y: it was refused."""
    from napari_stentrans.core.errors import ReadError
    from napari_stentrans.core.io.labels import read_labels

    obs_names = pd.Index(["9x21", "10x13", "11x13"])
    array = (np.array([21, 13, 13]), np.array([9, 10, 11]))  # (array_row, array_col)
    table = (
        "Row.names\tx\ty\tpixel_x\tpixel_y\tlabel\n1002x1762\t9.02\t20.994\t1002.5\t1761.9\tinvasive cancer\n"
    )
    (tmp_path / "A_labeled_coordinates.tsv").write_text(
        table + "1100x2400\t10.1\t12.97\t1100\t2400\tadipose tissue\n"
    )
    labels = read_labels(tmp_path / "A_labeled_coordinates.tsv", obs_names, array)
    np.testing.assert_array_equal(labels, ["invasive cancer", "adipose tissue", "nan"])
    with pytest.raises(ReadError, match="needs barcode,label columns"):  # no array coordinates given
        read_labels(tmp_path / "A_labeled_coordinates.tsv", obs_names)
    (tmp_path / "twice.tsv").write_text(table + "1003x1763\t9.1\t21.2\t1003\t1763\tstroma\n")
    with pytest.raises(ReadError, match=r"twice.tsv: two rows label the spot at x=9, y=21"):
        read_labels(tmp_path / "twice.tsv", obs_names, array)
    (tmp_path / "elsewhere.tsv").write_text(table.replace("9.02\t20.994", "30.0\t2.0"))
    with pytest.raises(ReadError, match="elsewhere.tsv: its x,y coordinates match none of the slide's spots"):
        read_labels(tmp_path / "elsewhere.tsv", obs_names, array)


def test_her2st_labels_reach_every_spot_of_their_section(shared_data, capsys):
    """`stentrans evaluate --labels B1_labeled_coordinates.tsv` scores the ARI on her2st's own annotations."""
    folder = shared_data / "st_her2st_andersson2021"
    args = ["evaluate", folder / "B1_counts.tsv.gz", "--methods", "linear,lowrank", "--labels"]
    code, out, err = run_cli([*args, folder / "B1_labeled_coordinates.tsv"], capsys)
    assert code == 0, err
    header, row = out.splitlines()[:2]
    assert header.split()[-2] == "ARI" and row.startswith("linear")
    labelled = int(re.search(r"ARI over the (\d+) scored spots with a label", out).group(1))
    scored = int(re.search(r"heldout: (\d+) scored spots", out).group(1))
    # every spot of B1 has a label; its 26 "undetermined" spots count as unannotated
    assert scored - 26 <= labelled < scored
    # the rank-1 estimate follows one pattern where the truth without its noise follows about 9:
    # named, as enhance would warn; linear interpolation (13 patterns) is not
    signal = float(re.search(r"^ without Poisson noise +[\d.]+ +([\d.]+)$", out, re.M).group(1))
    patterns = [line for line in out.splitlines() if line.startswith("patterns: ")]
    assert len(patterns) == 1 and patterns[0].startswith(
        "patterns: lowrank follows under half as many shared patterns as the measured genes without "
        f"their Poisson noise (lowrank: effective rank 1.0 against {signal:.1f}): not suitable for"
    )


def test_evaluate_names_the_methods_under_the_pattern_bar_by_the_truth_it_has():
    """The patterns line of `evaluate` judges every method by enhance's bar: half the truth's rank
    without its Poisson noise, or the fixed bar of 5 patterns when a report has no signal."""
    from napari_stentrans.cli import _few_patterns_line

    methods = {
        "default": {"effective_rank": 3.0},
        "linear": {"effective_rank": 12.0},
        "cubic": {"effective_rank": 4.5},
    }
    report = {"truth": {"effective_rank": 30.0, "signal_effective_rank": 8.0}, "spatial_genes": [0] * 100}
    report["methods"] = methods
    assert _few_patterns_line(report) == (
        "patterns: default follows under half as many shared patterns as the measured genes without "
        "their Poisson noise (default: effective rank 3.0 against 8.0): not suitable for co-expression, "
        "clustering or differential-expression analysis"
    )
    report["truth"]["signal_effective_rank"] = float("nan")  # not counts: under 5 patterns
    assert _few_patterns_line(report).startswith(
        "patterns: default, cubic follow a few shared patterns (default: effective rank 3.0; measured "
        "30.0; cubic: effective rank 4.5; measured 30.0)"
    )
    methods["default"]["effective_rank"] = methods["cubic"]["effective_rank"] = 6.0
    assert (
        _few_patterns_line(report) == "patterns: no method follows too few shared patterns by enhance's bar"
    )
    report["truth"]["signal_effective_rank"] = 8.0  # none is under 4.0 either: said, not silent
    assert _few_patterns_line(report) == (
        "patterns: every method keeps at least 50% of the truth's effective rank without its Poisson noise (8.0)"
    )
    # too few genes to judge: said, as enhance says it (its silence read as a pass)
    report["spatial_genes"], methods["default"]["effective_rank"] = [0] * 4, 1.0
    assert _few_patterns_line(report) == (
        "patterns: not judged: only 4 genes (at least 5 are needed to judge patterns)"
    )
