"""The three nets, their weight files and training checkpoints, and export to ONNX / TorchScript."""
