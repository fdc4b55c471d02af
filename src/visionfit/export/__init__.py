"""`visionfit export`: a checkpoint as one verified, self-contained ONNX file.

`graph` (the network behind its normalisation, traced, with its metadata), `checks` (onnx.checker
and onnxruntime against PyTorch), `quantization` (int8), `writing` (`export_onnx`: load, trace,
check, put in place). Running an export is inference's (`inference.onnx_runtime`), below this.
"""

from visionfit.export.writing import ExportOptions, ExportResult, export_onnx

__all__ = ["ExportOptions", "ExportResult", "export_onnx"]
