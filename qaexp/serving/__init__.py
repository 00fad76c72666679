"""Serving a trained model from an ONNX export: `export` (torch -> ONNX, optional int8, the
accuracy gate, `python -m qaexp.export`), `backend` (an ONNX Runtime session behind the
model call that `qaexp.evaluation.collect_logits` makes, so exported models answer through
the same windows and post-processing as PyTorch ones), `gate` (PyTorch vs export on eval data).

Nothing is imported here: `qaexp.answering` loads `qaexp.serving.backend` only for an
exported folder, and onnxruntime is an optional extra (``pip install -e ".[onnx]"``).
"""
