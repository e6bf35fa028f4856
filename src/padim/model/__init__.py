"""The estimator layer: `Padim` (fit / predict / save / load) in `estimator`, its config,
threshold calibration, model files, and fitting many models from a manifest.

Kept import-free so that light modules (e.g. `calibration`) load without torch."""
