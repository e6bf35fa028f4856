"""Measuring models: metrics (AUROC, AUPRO, F1, ...), evaluation runs on labelled test sets,
perturbations (Rd-MVTec), the benchmark with its tables and published numbers, report figures
(`pip install 'padim[report]'`) and the demo."""
