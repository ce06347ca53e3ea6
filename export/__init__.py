"""ONNX export, FP16 conversion, TensorRT engine build, parity, bundle."""
