"""Write the bundled synthetic sample slides (seeded; the generator is the source of truth).

Usage: python sample_data/generate.py [OUT_DIR]   (default: this folder)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_stentrans.core.files import write_h5ad
from napari_stentrans.synthetic import SAMPLES, sample_slide


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, kind in SAMPLES.items():
        adata = sample_slide(name)
        write_h5ad(adata, out_dir / f"{name}.h5ad")
        print(f"wrote {out_dir / name}.h5ad: {adata.n_obs} spots x {adata.n_vars} genes ({kind} lattice)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir", nargs="?", type=Path, default=Path(__file__).parent, help="default: this folder"
    )
    main(parser.parse_args().out_dir)
