"""Write the bundled synthetic sample slides (seeded; the generator is the source of truth).

Usage: python sample_data/generate.py [OUT_DIR]   (default: this folder)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_stentrans.core.files import write_h5ad
from napari_stentrans.synthetic import synthetic_slide


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, name in (("hex", "synthetic_visium.h5ad"), ("square", "synthetic_st.h5ad")):
        adata = synthetic_slide(kind, n_genes=300, seed=0)
        write_h5ad(adata, out_dir / name)
        print(f"wrote {out_dir / name}: {adata.n_obs} spots x {adata.n_vars} genes ({kind} lattice)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir", nargs="?", type=Path, default=Path(__file__).parent, help="default: this folder"
    )
    main(parser.parse_args().out_dir)
