"""l2m: text to 2D point trajectories (Lang2Motion), on ONNX Runtime or TensorRT. Never imports torch."""

__version__ = "0.1.0"
