"""Leave-one-slide-out evaluation of pretraining (issue 13): does learning across slides help?

Usage::

    python benchmarks/bench_transfer.py [--datasets melanoma_mel1_rep2,mob_stahl2016,bc_layer2]
        [--test NAME,...] [--protocols heldout,lost] [--epochs 5] [--train-genes 300] [--finetune 0,2]
        [--seed 0[,1,2]] [--reference] [--no-learned] [--out docs/accuracy/transfer]

For every test slide T among ``--test`` (default: every slide of ``--datasets``; names as in
``bench_accuracy.py``): one correction network is pretrained on the other slides of ``--datasets`` (:func:`napari_stentrans.pretrain`; T's spots are never seen), then on each protocol's
split of T (``stentrans evaluate``'s engine: the held-out coset, or lost blobs) it is judged on
T's seen spots and fine-tuned there for each ``--finetune`` epoch count
(:func:`napari_stentrans.finetune`; the classical estimate when it does not help), and scored
with every metric of ``stentrans evaluate`` beside the per-slide ``default`` (``stentrans``) and
the per-slide ``transformer`` trained with the same epochs and genes; with ``--reference``
also the ``default`` with the other slides of ``--datasets`` as same-tissue references
(:mod:`napari_stentrans.core.reference`; a reference holding T's spots is refused), reported as
``default_reference``. Reports go to
``OUT/runs/{T}_{protocol}_s{seed}.json`` (kept: a run whose file exists is not repeated) and a
markdown table to ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_accuracy import DATASETS, SHARED, labels_of  # noqa: E402

METRICS = [
    ("median_pcc", "r (counts)"),
    ("median_pcc_norm", "r (norm)"),
    ("rmse_norm", "RMSE (norm)"),
    ("gene_specific_r", "gene-specific r"),
    ("coexpression_r", "co-expr r"),
    ("pc1_share", "PC1 share"),
    ("effective_rank", "eff. rank"),
    ("ari", "ARI"),
    ("seconds", "seconds"),
]


def read_slide(name: str):
    from napari_stentrans import read

    return read(SHARED / dict(DATASETS)[name])


def run_pretrained(model, split, epochs: int, seed: int, device: str):
    """The pretrained model judged (and fine-tuned ``epochs``) on the split's seen spots, then scored."""
    from napari_stentrans.core.evaluate import MethodResult
    from napari_stentrans.core.pretrain import finetune

    start = time.perf_counter()
    fitted = finetune(model, split.train_slide, epochs=epochs, device=device)
    counts, depth = fitted.predict(
        split.known_slide, split.sites, split.gene_idx, device=device, classical="keep"
    )
    judged = fitted.validation
    extra = {
        "kept": "network" if fitted.uses_network else "classical (default)",
        "classical_val_loss": float(judged["classical_val_loss"]),
        "default_val_loss": float(judged.get("default_val_loss", np.nan)),
        "best_val_loss": float(np.nanmin(fitted.history["val_loss"])),
        **_gate_scores(fitted),
    }
    return MethodResult(counts, depth, time.perf_counter() - start, extra)


def run_per_slide_transformer(split, args):
    """The ``transformer`` preset trained on the split's seen spots alone (same epochs and genes)."""
    from napari_stentrans.core.config import preset
    from napari_stentrans.core.estimators import make_estimator
    from napari_stentrans.core.evaluate import MethodResult

    start = time.perf_counter()
    config = preset(
        "transformer",
        split.known_slide.lattice.kind,
        epochs=args.epochs,
        n_train_genes=args.train_genes,
        seed=args.seed,
    )
    model = make_estimator(config).fit(split.train_slide, device=args.device)
    counts, depth = model.predict(
        split.known_slide, split.sites, split.gene_idx, device=args.device, classical="keep"
    )
    kept = "network" if model.uses_network else "classical (default)"
    return MethodResult(counts, depth, time.perf_counter() - start, {"kept": kept, **_gate_scores(model)})


def _gate_scores(model) -> dict:
    """The gate's correlation scores of the kept network and of the default (when recorded)."""
    return {
        key: float(model.validation[key])
        for key in ("val_score", "default_val_score")
        if key in model.validation
    }


def evaluate_fold(test: str, pool: list[str], args) -> None:
    import napari_stentrans as st
    from napari_stentrans.core.evaluate import judged_against, make_split, run_method, score

    runs = args.out / "runs"
    todo = [p for p in args.protocols if not (runs / f"{test}_{p}_s{args.seed}.json").exists()]
    if not todo:
        return
    others = [n for n in pool if n != test]
    start = time.perf_counter()
    model = (
        None
        if not args.learned
        else st.pretrain(
            [read_slide(n) for n in others],
            "transformer",
            device=args.device,
            names=others,
            epochs=args.epochs,
            n_train_genes=args.train_genes,
            seed=args.seed,
        )
    )
    pretrain_seconds = time.perf_counter() - start
    best = None if model is None else int(model.validation["best_epoch"])
    if model is not None:
        print(f"{test}: pretrained on {others} in {pretrain_seconds:.0f} s, best epoch {best}", flush=True)
    adata = read_slide(test)
    references = None
    if args.reference:
        from napari_stentrans.core.evaluate import check_references
        from napari_stentrans.core.slide import Slide

        references = [Slide.from_adata(read_slide(n)) for n in others]
        check_references(adata, references, others)  # never the test slide, nor its spots
    for protocol in todo:
        split = make_split(adata, protocol, seed=args.seed)
        ref = judged_against(split, labels_of(test, adata))  # the ARI of annotated slides (DLPFC)
        report = {
            "dataset": test,
            "protocol": protocol,
            "seed": args.seed,
            "pretrained_on": others,
            "pretrain_seconds": round(pretrain_seconds, 1),
            "pretrain_best_epoch": best,
            "epochs": args.epochs,
            "train_genes": args.train_genes,
            "n_genes": int(len(split.genes)),
            "n_heldout_spots": int(len(split.target_rows)),
            "methods": {},
        }
        result = run_method("stentrans", split, seed=args.seed, device=args.device)
        report["methods"]["stentrans"] = score(result, split, ref, args.seed)
        if args.reference:  # the default with the other slides as same-tissue references
            report["methods"]["default_reference"] = score(
                run_method(
                    "default",
                    split,
                    seed=args.seed,
                    device=args.device,
                    reference=references,
                    reference_names=others,
                ),
                split,
                ref,
                args.seed,
            )
        if args.learned:  # --no-learned: the default and the reference only
            result = run_per_slide_transformer(split, args)
            report["methods"]["stentrans_transformer"] = score(result, split, ref, args.seed)
        for epochs in args.finetune if args.learned else []:
            result = run_pretrained(model, split, epochs, args.seed, args.device)
            report["methods"][f"pretrained_ft{epochs}"] = score(result, split, ref, args.seed)
        for name, s in report["methods"].items():
            print(
                f"  {protocol:8s} {name:24s} r {s['median_pcc']:.3f} r(norm) {s['median_pcc_norm']:.3f} "
                f"gene-specific {s['gene_specific_r']:.3f} {s.get('kept', '')}",
                flush=True,
            )
        runs.mkdir(parents=True, exist_ok=True)
        for s in report["methods"].values():
            s.pop("pcc", None)
        (runs / f"{test}_{protocol}_s{args.seed}.json").write_text(json.dumps(report, indent=1))


def table(args) -> str:
    """Markdown: one row per (slide, protocol, method), every metric; the median slide below."""
    reports = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json"))]
    head = "| slide | protocol | seed | method | " + " | ".join(label for _, label in METRICS) + " | kept |"
    lines = [head, "|" + "---|" * (len(METRICS) + 5)]
    deltas: dict[tuple[str, str], list] = {}
    for rep in reports:
        base = rep["methods"]["stentrans"]
        for name, s in rep["methods"].items():
            cells = [f"{s[k]:.3f}" if isinstance(s.get(k), float) else str(s.get(k, "")) for k, _ in METRICS]
            lines.append(
                f"| {rep['dataset']} | {rep['protocol']} | {rep['seed']} | {name} | "
                + " | ".join(cells)
                + f" | {s.get('kept', '')} |"
            )
            if name != "stentrans":
                deltas.setdefault((rep["protocol"], name), {}).setdefault(rep["dataset"], []).append(
                    (
                        s["median_pcc_norm"] - base["median_pcc_norm"],
                        s["gene_specific_r"] - base["gene_specific_r"],
                    )
                )
    lines += [
        "",
        "Below: each slide's change against the per-slide default (`stentrans`), median over its seeds,",
        "then the median over slides (the median slide).",
        "",
        "| protocol | method | median Δ r (norm) vs default | median Δ gene-specific r | slides | runs |",
        "|---|---|---|---|---|---|",
    ]
    for (protocol, name), per_slide in sorted(deltas.items()):
        arr = np.array([np.median(np.array(d), axis=0) for d in per_slide.values()])
        runs = sum(len(d) for d in per_slide.values())
        lines.append(
            f"| {protocol} | {name} | {np.median(arr[:, 0]):+.3f} | {np.median(arr[:, 1]):+.3f} | "
            f"{len(per_slide)} | {runs} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="melanoma_mel1_rep2,mob_stahl2016,bc_layer2")
    parser.add_argument("--test", help="the slides to test on (default: every slide of --datasets)")
    parser.add_argument("--protocols", default="heldout,lost")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-genes", type=int, default=300)
    parser.add_argument("--finetune", default="0,2")
    parser.add_argument("--seed", default="0", help="seed, or comma-separated seeds (one run each)")
    parser.add_argument(
        "--learned",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-learned: no pretraining, per-slide transformer or fine-tuning (the default and "
        "--reference only)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also score the default with the other slides of --datasets as same-tissue references",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy" / "transfer")
    args = parser.parse_args()
    args.protocols = args.protocols.split(",")
    args.finetune = [int(x) for x in args.finetune.split(",")]
    pool = args.datasets.split(",")
    for seed in [int(x) for x in args.seed.split(",")]:
        args.seed = seed
        for test in args.test.split(",") if args.test else pool:
            evaluate_fold(test, pool, args)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(args)
    (args.out / "README.md").write_text(
        "# Leave-one-slide-out: pretrained correction vs the per-slide default\n\n"
        "Rebuild: `python benchmarks/bench_transfer.py "
        + " ".join(sys.argv[1:])
        + "` (see the script's docstring).\n\n"
        + text
    )
    print(text)


if __name__ == "__main__":
    main()
