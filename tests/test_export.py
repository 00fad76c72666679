"""`python -m qaexp.export` and serving from its folder: the tiny BERT (token types) and a
tiny XLM-R (none), fp32 and int8; the accuracy gate (passing, and refusing on purpose); the
pipeline, predict and evaluate-only runs on an exported folder; the ONNX Runtime fusions;
missing onnxruntime; bad paths."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_RUN, run_cli, small_config
from tests.families import build_family_checkpoint
from tests.test_unicode import squad_json

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[dev,onnx]'")

QUESTIONS = [
    {"question": "Who designed the bridge?", "context": "Clara Holm designed the bridge in 1931."},
    {"question": "When did it open?", "context": "The bridge opened in 1931 after six years."},
    {"question": "What is long?", "context": " ".join(["The river is long and wide."] * 80)},
]


def export(checkpoint: Path, *args: str):
    return run_cli([f"checkpoint={checkpoint}", *args], checkpoint.parent, "qaexp.export")


@pytest.fixture(scope="module")
def gate_file(tmp_path_factory) -> Path:
    """Twelve synthetic SQuAD questions with answers (the gate's data= file)."""
    from qaexp.data.synthetic import generate_examples

    path = tmp_path_factory.mktemp("gate") / "dev.json"
    path.write_text(json.dumps(squad_json(list(generate_examples(12, seed=1, split="validation")))))
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory, tiny_qa_checkpoint) -> Path:
    """The tiny BERT checkpoint inside a run folder whose summary.json names its evaluation
    data (the synthetic split of tests' small runs), exported fp32 (gated on that data)."""
    from qaexp.config import as_dict

    run = tmp_path_factory.mktemp("run")
    checkpoint = run / "checkpoint"
    shutil.copytree(tiny_qa_checkpoint, checkpoint)
    config = as_dict(small_config("data.max_eval_samples=12"))
    (run / "summary.json").write_text(json.dumps({"config": config}))
    done = export(checkpoint)
    assert done.returncode == 0, done.stderr
    return checkpoint


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory, gate_file) -> Path:
    """A tiny XLM-R (no token_type_ids), exported fp32 and int8 against `gate_file`."""
    checkpoint = build_family_checkpoint("xlm-roberta", tmp_path_factory.mktemp("x") / "ckpt")
    for quantize in ("none", "int8"):
        done = export(checkpoint, f"data={gate_file}", f"quantize={quantize}")
        assert done.returncode == 0, done.stderr
    return checkpoint


def record(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


def graph_inputs(folder: Path) -> dict[str, list]:
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.input
    }


def test_export_folder_holds_the_model_tokenizer_and_record(bert):
    folder = bert.with_name("checkpoint-onnx")
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "export.json", "tokenizer.json", "config.json"} <= names
    rec = record(folder)
    assert rec["source_checkpoint"] == str(bert.resolve())
    assert rec["quantization"] == "none" and rec["opset"] >= 17
    gate = rec["accuracy_check"]
    assert (
        gate["passed"] and gate["examples"] == 12 and "the run's evaluation data" in gate["source"]
    )
    assert gate["identical_answers"] == 100.0 and gate["f1_drop"] == 0.0
    assert gate["torch"] == gate["onnx"]
    # every input has a symbolic batch and sequence axis
    inputs = graph_inputs(folder)
    assert sorted(inputs) == ["attention_mask", "input_ids", "token_type_ids"]
    assert all(isinstance(d, str) for dims in inputs.values() for d in dims)
    assert not [p for p in bert.parent.iterdir() if p.name.startswith(".")]


def test_a_model_without_token_types_exports_without_them(xlmr):
    for suffix in ("-onnx", "-onnx-int8"):
        folder = xlmr.with_name(xlmr.name + suffix)
        assert sorted(graph_inputs(folder)) == ["attention_mask", "input_ids"]
        assert record(folder)["inputs"] == ["input_ids", "attention_mask"]
    int8 = record(xlmr.with_name(xlmr.name + "-onnx-int8"))
    assert int8["quantization"] == "int8" and int8["int8"]["weights"] == "QInt8"
    assert int8["int8"]["per_channel"] and int8["int8"]["reduce_range"]
    fp32_size = (xlmr.with_name(xlmr.name + "-onnx") / "model.onnx").stat().st_size
    assert int8["model_bytes"] < fp32_size


def answers(qa) -> list[list[dict]]:
    return qa(QUESTIONS, top_k=3)


@pytest.mark.parametrize("which", ["bert", "xlmr"])
def test_fp32_export_answers_as_pytorch_does_through_the_pipeline(which, request):
    from qaexp.answering import pipeline

    checkpoint = request.getfixturevalue(which)
    torch_answers = answers(pipeline(checkpoint, device="cpu"))
    for qa in (
        pipeline(checkpoint.with_name(checkpoint.name + "-onnx")),
        pipeline(checkpoint, backend="onnx"),
    ):
        onnx_answers = answers(qa)
        assert [[a["answer"] for a in r] for r in onnx_answers] == [
            [a["answer"] for a in r] for r in torch_answers
        ]
        for got, want in zip(onnx_answers, torch_answers, strict=True):
            assert [a["score"] for a in got] == pytest.approx([a["score"] for a in want], rel=1e-4)


def test_int8_export_logits_stay_close_to_pytorch(xlmr, gate_file):
    import datasets
    import numpy as np

    from qaexp.answering import pipeline
    from qaexp.features import prepare_eval_features

    torch_qa = pipeline(xlmr, device="cpu")
    int8_qa = pipeline(xlmr, backend="onnx-int8")
    examples = datasets.Dataset.from_list([dict(q, id=str(i)) for i, q in enumerate(QUESTIONS)])
    features = datasets.Dataset.from_dict(
        prepare_eval_features(examples.to_dict(), torch_qa.tokenizer, 384, 128)
    )
    want, _ = torch_qa.window_logits(features, 8, 384)
    got, _ = int8_qa.window_logits(features, 8, 384)
    real = np.isfinite(want)
    assert (np.isfinite(got) == real).all()
    error = np.abs(got[real] - want[real]).max()
    assert 0 < error < 0.05 * np.abs(want[real]).max()  # quantized, not equal; but close
    gate = record(xlmr.with_name(xlmr.name + "-onnx-int8"))["accuracy_check"]
    assert gate["passed"] and gate["f1_drop"] <= 0.5


def test_predict_answers_a_file_from_the_export_as_from_the_checkpoint(bert, gate_file, tmp_path):
    outputs = {}
    for name, args in {
        "torch": [f"checkpoint={bert}"],
        "folder": [f"checkpoint={bert.with_name('checkpoint-onnx')}"],
        "backend": [f"checkpoint={bert}", "backend=onnx"],
    }.items():
        out = tmp_path / f"{name}.json"
        done = run_cli([*args, f"input={gate_file}", f"output={out}"], tmp_path, "qaexp.predict")
        assert done.returncode == 0, done.stderr
        outputs[name] = json.loads(out.read_text())
    assert len(outputs["torch"]) == 12
    assert outputs["folder"] == outputs["torch"] == outputs["backend"]


def test_evaluate_only_on_an_export_scores_it_as_its_source(bert, tmp_path):
    """`trainer.epochs=0` on the fp32 export: a whole run folder, answers equal to PyTorch's."""
    runs = {}
    for name, model in {"export": bert.with_name("checkpoint-onnx"), "torch": bert}.items():
        done = run_cli(
            [
                *SMALL_RUN,
                "model.init=pretrained",
                f"model.name_or_path={model}",
                "trainer.epochs=0",
                f"hydra.run.dir={name}",
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr
        runs[name] = tmp_path / name
    assert (
        "ONNX export (quantization none), answered by ONNX Runtime"
        in (runs["export"] / "qaexp.log").read_text()
    )
    assert (runs["export"] / "predictions.json").read_text() == (
        runs["torch"] / "predictions.json"
    ).read_text()
    scores = [json.loads((runs[n] / "summary.json").read_text()) for n in runs]
    assert scores[0]["best_f1"] == scores[1]["best_f1"] is not None
    assert (runs["export"] / "answers.jsonl").is_file()
    assert not (runs["export"] / "checkpoint").exists()


@pytest.mark.parametrize(
    "override, says",
    [
        ("trainer.epochs=1", "trainer.epochs=1 trains PyTorch weights"),
        ("model.init=random", "model.init=random would replace the export's weights"),
        ("trainer.engine=hf", "trainer.engine=hf: the Trainer takes PyTorch models only"),
        ("trainer.save_checkpoint=last", "trainer.save_checkpoint=last would copy"),
        ("hub.push=true", "hub.push=true uploads PyTorch weights"),
        ("hardware.num_processes=2", "hardware.num_processes=2: an ONNX Runtime session"),
    ],
)
def test_a_run_on_an_export_refuses_what_needs_pytorch_weights(bert, override, says):
    from qaexp.errors import QAExpError
    from qaexp.training.setup import check_export_run

    folder = bert.with_name("checkpoint-onnx")
    settings = ["model.init=pretrained", "trainer.epochs=0", override]
    cfg = small_config(f"model.name_or_path={folder}", *settings)
    with pytest.raises(QAExpError, match=f"{folder} is an ONNX export") as err:
        check_export_run(cfg)
    assert says in str(err.value)
    check_export_run(small_config(f"model.name_or_path={bert}", "model.init=pretrained", override))


def test_an_export_outside_python_m_qaexp_is_refused_with_the_way_to_score_it(bert):
    from qaexp.errors import QAExpError
    from qaexp.modeling import load_export_model, serve_exports_with

    serve_exports_with(None)
    with pytest.raises(QAExpError, match="qaexp.predict checkpoint=") as err:
        load_export_model(str(bert.with_name("checkpoint-onnx")))
    assert "trainer.epochs=0" in str(err.value)


def test_a_failed_gate_refuses_with_the_figures_and_leaves_nothing(bert, gate_file):
    done = export(bert, f"data={gate_file}", "quantize=int8", "max_f1_drop=-100")
    assert done.returncode == 2
    assert "Export refused" in done.stderr and "PyTorch EM" in done.stderr
    assert "allowed -100" in done.stderr and "identical answers" in done.stderr
    assert not bert.with_name("checkpoint-onnx-int8").exists()
    assert not [p for p in bert.parent.iterdir() if p.name.startswith(".")]


def test_a_failed_gate_keeps_the_previous_export(bert, gate_file):
    folder = bert.with_name("checkpoint-onnx")
    before = (folder / "export.json").read_text()
    done = export(bert, f"data={gate_file}", "max_f1_drop=-100")
    assert done.returncode == 2
    assert (folder / "export.json").read_text() == before


def test_missing_onnxruntime_gets_the_install_paragraph(bert, monkeypatch):
    from qaexp.answering import pipeline
    from qaexp.errors import QAExpError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    done = export(bert, "quantize=int8")
    assert done.returncode == 2
    assert 'pip install -e ".[onnx]"' in done.stderr and "onnxruntime" in done.stderr
    assert not bert.with_name("checkpoint-onnx-int8").exists()
    with pytest.raises(QAExpError, match="onnxruntime"):
        pipeline(bert.with_name("checkpoint-onnx"))


@pytest.mark.parametrize(
    "args, says",
    [
        (["checkpoint=nowhere/checkpoint"], "checkpoint=nowhere/checkpoint: no such folder"),
        (["checkpoint=ck", "quantize=int4"], "quantize=int4: must be one of none, int8"),
        (["checkpoint=ck", "max_f1_drop=half"], "max_f1_drop=half: must be a finite number"),
        (["quantize=int8"], "checkpoint=PATH is required"),
    ],
)
def test_bad_arguments_exit_2_with_one_paragraph(args, says, tmp_path):
    done = run_cli(args, tmp_path, "qaexp.export")
    assert done.returncode == 2 and says in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_outside_a_run_needs_data(tiny_qa_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_qa_checkpoint, checkpoint)
    done = export(checkpoint)
    assert done.returncode == 2 and "pass data=FILE" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_backend_onnx_without_an_export_says_how_to_write_one(tiny_qa_checkpoint):
    from qaexp.answering import pipeline
    from qaexp.errors import QAExpError

    with pytest.raises(QAExpError, match="python -m qaexp.export checkpoint="):
        pipeline(tiny_qa_checkpoint, backend="onnx-int8")


def test_an_output_folder_that_cannot_be_made_is_named(bert, gate_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = export(bert, f"data={gate_file}", f"output={blocker / 'export'}")
    assert done.returncode == 2 and "cannot write the export there" in done.stderr
    assert blocker.read_text() == ""


def attention_nodes(folder: Path) -> list:
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return [n for n in graph.node if n.domain == "com.microsoft" and "Attention" in n.op_type]


def test_exports_fuse_attention_with_the_padding_mask_and_int8_quantizes_it(xlmr):
    from qaexp.serving.fusion import MASK_INDEX

    fp32 = xlmr.with_name(xlmr.name + "-onnx")
    fused = record(fp32)["onnxruntime_fusion"]
    assert fused["attention_mask_index"] and fused["fusions"]["attention"] == 1
    nodes = attention_nodes(fp32)
    assert [n.op_type for n in nodes] == ["Attention"]
    assert list(nodes[0].input)[3:] == [MASK_INDEX]  # the mask, no additive bias
    # int8: the query/key/value projection is quantized too (QAttention), with the same mask
    int8 = attention_nodes(xlmr.with_name(xlmr.name + "-onnx-int8"))
    assert [n.op_type for n in int8] == ["QAttention"] and MASK_INDEX in int8[0].input


@pytest.fixture
def raw_export(xlmr, tmp_path) -> tuple[Path, list[str], int]:
    """The tiny XLM-R as torch's exporter writes it, before the fusions."""
    from qaexp.modeling import load_qa_checkpoint
    from qaexp.serving.export import export_onnx

    model, tokenizer = load_qa_checkpoint(str(xlmr), "checkpoint")
    path = tmp_path / "exported.onnx"
    return path, export_onnx(model.eval(), tokenizer, path), model.config.vocab_size


def test_a_mask_index_that_changes_the_logits_keeps_the_attention_bias(raw_export, monkeypatch):
    import onnx

    from qaexp.serving import fusion

    source, inputs, vocab = raw_export
    target = source.with_name("fused.onnx")
    monkeypatch.setattr(fusion, "PROBE_TOLERANCE", -1.0)  # any difference, even none, is too much
    report = fusion.fuse(source, target, inputs, vocab)
    assert not report.mask_index and "changed the logits" in report.note
    (node,) = [n for n in onnx.load(str(target)).graph.node if n.op_type == "Attention"]
    assert fusion.MASK_INDEX not in node.input and node.input[5]  # the bias is kept
    assert sorted(p.name for p in source.parent.iterdir()) == ["exported.onnx", "fused.onnx"]


def test_the_probe_sees_a_difference_between_two_graphs(xlmr):
    from qaexp.serving.fusion import probe_difference

    fp32 = xlmr.with_name(xlmr.name + "-onnx") / "model.onnx"
    int8 = xlmr.with_name(xlmr.name + "-onnx-int8") / "model.onnx"
    inputs = ["input_ids", "attention_mask"]
    assert probe_difference(fp32, fp32, inputs, 600) == 0.0
    assert probe_difference(fp32, int8, inputs, 600) > 1e-3


def test_a_failing_fusion_exports_the_graph_unfused(bert, gate_file, tmp_path, monkeypatch):
    from qaexp.serving import export as export_module

    def broken(*args):
        raise RuntimeError("pattern matcher gave up")

    monkeypatch.setattr(export_module, "fuse", broken)
    folder = export_module.run(
        export_module.ExportConfig(str(bert), data=str(gate_file), output=str(tmp_path / "out"))
    )
    fused = record(folder)["onnxruntime_fusion"]
    assert not fused["attention_mask_index"] and "pattern matcher gave up" in fused["note"]
    assert attention_nodes(folder) == [] and record(folder)["accuracy_check"]["passed"]


def test_a_squad_v2_checkpoint_keeps_its_null_threshold_in_the_export(
    tiny_qa_checkpoint, gate_file, tmp_path
):
    """The threshold a SQuAD v2.0 run chose travels with the export and decides its answers:
    one so low that "no answer" beats every span empties every answer, on both backends."""
    from qaexp.answering import pipeline
    from qaexp.tracking.rundir import NULL_THRESHOLD_FILE, read_null_threshold

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_qa_checkpoint, checkpoint)
    before = [a["answer"] for a in pipeline(checkpoint, device="cpu")(QUESTIONS)]
    assert all(before)  # without a threshold every question gets a span
    threshold = {"null_score_diff_threshold": -1e9}
    (checkpoint / NULL_THRESHOLD_FILE).write_text(json.dumps(threshold))
    done = export(checkpoint, f"data={gate_file}")
    assert done.returncode == 0, done.stderr
    folder = checkpoint.with_name("checkpoint-onnx")
    assert read_null_threshold(folder) == -1e9
    for qa in (pipeline(checkpoint, device="cpu"), pipeline(folder)):
        assert [a["answer"] for a in qa(QUESTIONS)] == ["", "", ""]


def test_an_export_finishing_while_another_lands_replaces_it(tmp_path, monkeypatch):
    """Two exports of one checkpoint: the other puts its folder in place between this one's
    two renames; this one sets it aside too and lands, leaving nothing else behind."""
    from qaexp.serving.export import replace_folder

    target = tmp_path / "checkpoint-onnx"
    target.mkdir()
    (target / "model.onnx").write_text("older")
    staging = tmp_path / ".checkpoint-onnx.staging-1"
    staging.mkdir()
    (staging / "model.onnx").write_text("mine")
    rename, raced = Path.rename, []

    def racing_rename(self, destination):
        if self == staging and not raced:  # the other export lands first
            raced.append(destination)
            Path(destination).mkdir()
            (Path(destination) / "model.onnx").write_text("theirs")
        return rename(self, destination)

    monkeypatch.setattr(Path, "rename", racing_rename)
    replace_folder(staging, target)
    assert raced and (target / "model.onnx").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-onnx"]


def test_a_killed_export_s_staging_folder_goes_at_the_next_export(bert, gate_file):
    import subprocess

    from qaexp.serving.export import remove_stale_staging

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    dead_pid = int(gone.stdout)
    target = bert.with_name("checkpoint-onnx")
    stale = [target.with_name(f".checkpoint-onnx.{kind}-{dead_pid}") for kind in ("staging", "old")]
    live = target.with_name(f".checkpoint-onnx.staging-{os.getpid()}")  # an export still running
    for folder in [*stale, live]:
        folder.mkdir()
        (folder / "model.onnx").write_text("half")
    remove_stale_staging(target)
    assert not any(folder.exists() for folder in stale)
    assert live.is_dir()
    shutil.rmtree(live)
