"""Deployment: the `Scorer` runtimes (torch, onnxruntime, OpenVINO), export with a parity check,
local `padim predict` outputs and resumable bulk jobs. Torch-free except `TorchScorer` and
export, which import it when used."""
