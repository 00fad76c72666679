"""An exported graph made fast for ONNX Runtime on a CPU, before it is quantized.

torch's dynamo exporter writes attention as a dozen small ops (and SDPA as its decomposition);
ONNX Runtime's own BERT optimizer is written for the TorchScript exporter's graphs and fuses no
Attention in these. onnxscript's ORT fusions (the exporter's own library) do: Attention,
SkipLayerNormalization, BiasGelu. Two steps then make the fused Attention quantizable:

* the packed query/key/value weight is folded into one constant (onnxscript's constant folding,
  with limits raised past a layer's weight);
* the padding mask is given as ONNX Runtime's 2-D ``mask_index`` (the attention_mask input, as
  int32) instead of the additive bias the fusion derives from it, and ``qkv_hidden_sizes`` is
  dropped where the three sizes are equal (its default). onnxruntime's quantizer turns such an
  Attention into QAttention (int8 query/key/value projection); it skips one with
  ``qkv_hidden_sizes``, and QAttention has no bias input.

The mask step is checked, not assumed: the graphs before and after it answer a padded probe
batch longer than a local-attention window, and a difference keeps the graph before it (a model
whose bias is more than the padding mask, such as sliding-window attention). On the quickstart
MiniLM's model alone (docs/speed.md), int8 ran at 1.15x PyTorch unfused, 1.44x fused and 1.63x
with QAttention.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from qaexp.serving.backend import OUTPUT_NAMES, open_session

ATTENTION = ("com.microsoft", "Attention")
MASK_INDEX = "qaexp_mask_index"
# Constant folding's default limits (8,192 / 262,144 elements) keep a packed query/key/value
# weight (hidden x 3 hidden: 442,368 elements for MiniLM) out of reach.
FOLD_LIMIT = 1 << 28
# The probe batch: longer than ModernBERT's 128-token local window, within every family's
# position table; rows padded by different amounts.
PROBE_LENGTH = 320
PROBE_TOLERANCE = 1e-3


@dataclasses.dataclass
class FusionReport:
    fusions: dict[str, int]  # onnxscript's fusion counts (the non-zero ones)
    mask_index: bool  # the Attention nodes take the padding mask as mask_index
    note: str = ""  # why the mask step was left out

    def record(self) -> dict:
        return {"fusions": self.fusions, "attention_mask_index": self.mask_index, "note": self.note}


def fuse(source: Path, target: Path, input_names: list[str], vocab_size: int) -> FusionReport:
    """Write `source` fused for ONNX Runtime to `target`."""
    from onnxscript import ir
    from onnxscript.optimizer import fold_constants
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, counts = optimize_for_ort(ir.load(str(source)))
    fold_constants(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    ir.save(model, str(target))
    fusions = {name: n for name, n in sorted(counts.items()) if n}
    masked = target.with_name(target.stem + ".masked.onnx")
    try:
        if not use_mask_index(target, masked):
            return FusionReport(fusions, False, "no fused Attention takes the padding bias alone")
        difference = probe_difference(target, masked, input_names, vocab_size)
        if difference > PROBE_TOLERANCE:
            return FusionReport(
                fusions,
                False,
                f"the padding mask as mask_index changed the logits by {difference:.3g}: the "
                "attention bias holds more than padding",
            )
        masked.replace(target)
        return FusionReport(fusions, True)
    finally:
        masked.unlink(missing_ok=True)


def use_mask_index(source: Path, target: Path) -> bool:
    """Write `source` with every fused Attention taking the attention_mask input as its 2-D
    mask_index; False (nothing written) when an Attention does not fit that form."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    if "attention_mask" not in {i.name for i in graph.input}:
        return False
    nodes = [n for n in graph.node if (n.domain, n.op_type) == ATTENTION]
    if not nodes:
        return False
    for node in nodes:
        inputs = list(node.input) + [""] * (6 - len(node.input))
        # input, weights, bias, mask_index, past, attention_bias: only the bias is a mask.
        if len(node.input) > 6 or any(inputs[3:5]) or not inputs[5]:
            return False
        sizes = [a for a in node.attribute if a.name == "qkv_hidden_sizes"]
        if sizes and len(set(sizes[0].ints)) != 1:
            return False
    for node in nodes:
        sizes = [a for a in node.attribute if a.name == "qkv_hidden_sizes"]
        if sizes:
            node.attribute.remove(sizes[0])
        kept = list(node.input[:3])
        del node.input[:]
        node.input.extend([*kept, MASK_INDEX])
    cast = onnx.helper.make_node(
        "Cast", ["attention_mask"], [MASK_INDEX], to=onnx.TensorProto.INT32, name=MASK_INDEX
    )
    graph.node.insert(0, cast)
    # The bias's producers now feed nothing; ONNX Runtime drops them when it loads the graph.
    onnx.save(model, str(target))
    return True


def probe_difference(first: Path, second: Path, input_names: list[str], vocab_size: int) -> float:
    """The largest logit difference between two graphs on a padded random batch (over the
    positions that are not padding)."""
    rng = np.random.default_rng(0)
    lengths = [PROBE_LENGTH, PROBE_LENGTH - 37, PROBE_LENGTH // 2, 9]
    ids = rng.integers(5, max(vocab_size, 6), size=(len(lengths), PROBE_LENGTH))
    mask = (np.arange(PROBE_LENGTH)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    feeds = {"input_ids": ids * mask, "attention_mask": mask}
    feeds["token_type_ids"] = np.zeros_like(mask)
    feeds = {name: feeds[name] for name in input_names}
    runs = [open_session(path).run(list(OUTPUT_NAMES), feeds) for path in (first, second)]
    keep = mask.astype(bool)
    return max(float(np.abs(a - b)[keep].max()) for a, b in zip(*runs, strict=True))
