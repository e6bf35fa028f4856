"""Images in and pictures out: safe decoding (`images`), the model-input geometry
(`preprocess`), labelled data sets (`datasets`), where images come from (`sources`: folders,
manifests), heat maps and overlays (`pictures`), the built-in demo set and MVTec AD download.
Torch-free."""
