"""The PaDiM maths and torch model: backbones (registry), patch embeddings, per-position
Gaussians, patch scores and the anomaly map, assembled in `net.PadimNet`. Imports nothing of
padim above the foundation (errors, options, memory)."""
