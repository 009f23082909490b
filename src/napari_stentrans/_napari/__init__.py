"""napari front end: reader, writer, sample data and widgets over the core engine."""
