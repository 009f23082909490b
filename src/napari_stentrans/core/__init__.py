"""napari-free engine: lattice geometry, I/O, model, training, enhancement, evaluation."""
