"""Today's encoder families offline (tests/families.py builds a tiny random checkpoint and a
tokenizer of each family's own kind): model-aware loading, normalised offsets, the label
check, and a real run with evaluation, predict, the pipeline and save/load per family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qaexp.errors import QAExpError
from qaexp.metrics import normalize_answer
from tests.conftest import SINGLE_RUN, run_cli
from tests.families import FAMILIES, build_family_checkpoint, corpus, deberta_spm_folder

# Context tokens that trip SentencePiece offsets: runs of spaces, a tab, a ligature that NFKC
# expands ("ﬁ"), characters the small vocabularies lack ("²", "東京", "…").
TRICKY = "Codes:  alpha x² beta\t東京 gamma ﬁve delta … end. Anna  Berg wrote it in 1987."
TRICKY_ANSWERS = ["x²", "東京", "ﬁve", "alpha x²", "Anna  Berg", "1987", "gamma"]
# Family -> (attention chosen by default, token_type_ids in the windows)
EXPECTED = {
    "deberta-v3": ("eager", False),
    "xlm-roberta": ("sdpa", False),
    "modernbert": ("sdpa", False),
    "electra": ("sdpa", True),
}


@pytest.fixture(scope="session")
def family_texts():
    return corpus()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, family_texts):
    """family -> a saved tiny checkpoint folder, each built once, when first asked for."""
    built: dict[str, Path] = {}

    def checkpoint(family: str) -> Path:
        if family not in built:
            folder = tmp_path_factory.mktemp("families") / family
            built[family] = build_family_checkpoint(family, folder, family_texts)
        return built[family]

    return checkpoint


def qaexp_tokenizer(folder: Path):
    from qaexp.config import ModelConfig
    from qaexp.modeling import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(folder)))


def squad_rows(context: str, answers: list[str]):
    import datasets

    from qaexp.data import SQUAD_FEATURES

    rows = [
        {
            "id": f"q{i}",
            "title": "t",
            "context": context,
            "question": "Which one?",
            "answers": {"text": [a], "answer_start": [context.index(a)]},
        }
        for i, a in enumerate(answers)
    ]
    return datasets.Dataset.from_list(rows, features=SQUAD_FEATURES)


def synthetic_rows(size: int = 40):
    import datasets

    from qaexp.data import SQUAD_FEATURES
    from qaexp.data.synthetic import generate_examples

    return datasets.Dataset.from_list(generate_examples(size, seed=1), features=SQUAD_FEATURES)


# --- unit: offsets ---------------------------------------------------------------------------


def test_normalised_spans_drop_spaces_and_overlaps():
    from qaexp.features import normalise_spans

    text = "ab  cd efg"
    # A leading space (" cd" as 3:6), a "▁" token holding the next character (7:8) before the
    # token of that word (7:10), a token of spaces only (2:4), and a non-context token.
    spans = np.array([[0, 0], [0, 2], [2, 4], [3, 6], [7, 8], [7, 10]])
    context = np.array([False, True, True, True, True, True])
    got = normalise_spans(spans, context, np.zeros(6, dtype=np.int64), text)
    assert got.tolist() == [[0, 0], [0, 2], [4, 4], [4, 6], [7, 7], [7, 10]]


@pytest.mark.parametrize("family", FAMILIES)
def test_context_offsets_start_at_a_character_and_never_overlap(family, checkpoints):
    from qaexp.features import prepare_eval_features

    tokenizer = qaexp_tokenizer(checkpoints(family))
    rows = squad_rows(TRICKY, TRICKY_ANSWERS)[:1]
    features = prepare_eval_features(rows, tokenizer, max_length=64, stride=16)
    for offsets in features["offset_mapping"]:
        spans = [s for s in offsets if s is not None]
        assert spans, "no context tokens"
        following = [*spans[1:], [len(TRICKY), 0]]
        for (start, end), (next_start, _) in zip(spans, following, strict=True):
            piece = TRICKY[start:end]
            assert piece and piece == piece.strip(), (start, end, piece)
            assert end <= next_start
    expected_inputs = {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if EXPECTED[family][1] else set()
    )
    assert (
        expected_inputs <= set(features) and ("token_type_ids" in features) == EXPECTED[family][1]
    )


def squeezed(text: str) -> str:
    """SQuAD-normalised, without spaces (WordPiece decodes "1.9" as "1. 9")."""
    return normalize_answer(text).replace(" ", "")


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_equal_a_direct_decoding(family, checkpoints):
    """Each labelled window's tokens, decoded by the tokenizer itself, give the gold answer;
    the label check agrees (every window recovered)."""
    import datasets

    from qaexp.features import train_feature_columns
    from qaexp.training.labels import check_train_labels

    tokenizer = qaexp_tokenizer(checkpoints(family))
    rows = synthetic_rows()
    table = train_feature_columns(rows[:], tokenizer, 96, 32, label_check=True)
    windows = datasets.Dataset(table)
    gold = dict(zip(rows["id"], (a["text"][0] for a in rows["answers"]), strict=True))
    labelled = 0
    for ids, start, end, example in zip(
        table["input_ids"].to_pylist(),
        table["start_positions"].to_pylist(),
        table["end_positions"].to_pylist(),
        table["example_id"].to_pylist(),
        strict=True,
    ):
        if start:
            labelled += 1
            decoded = tokenizer.decode(ids[start : end + 1])
            assert squeezed(decoded) == squeezed(gold[example]), example
    assert labelled >= len(rows)
    check = check_train_labels(windows, rows)
    assert (check.labelled, check.recovery) == (labelled, 1.0)


@pytest.mark.parametrize("family", ["xlm-roberta", "deberta-v3"])
def test_label_check_trips_on_overlapping_offsets_without_normalisation(family, checkpoints):
    """SentencePiece "▁" tokenizers give a lone "▁" the span of the character after it (or
    an NFKC-expanded ligature to two tokens): labels built on those raw offsets miss."""
    import datasets

    from qaexp.features import train_feature_columns
    from qaexp.training.labels import check_train_labels, require_label_recovery

    tokenizer = qaexp_tokenizer(checkpoints(family))
    rows = squad_rows(TRICKY, TRICKY_ANSWERS)

    def check(normalise: bool):
        table = train_feature_columns(
            rows[:], tokenizer, 64, 16, normalise_offsets=normalise, label_check=True
        )
        return check_train_labels(datasets.Dataset(table), rows)

    raw = check(normalise=False)
    assert raw.recovery < 0.99
    with pytest.raises(QAExpError, match=r"Label check failed.*q\d: gold") as failure:
        require_label_recovery(raw, 0.99)
    assert "data.min_label_recovery=0.99" in str(failure.value)
    assert check(normalise=True).recovery == 1.0


# --- loading ---------------------------------------------------------------------------------


def test_spm_model_is_converted_offline(tmp_path, family_texts):
    """A DeBERTa-v3 Hub repo's tokenizer files (spm.model, no tokenizer.json) give a fast
    tokenizer with offsets, and no token_type_ids for a model with type_vocab_size 0."""
    folder = deberta_spm_folder(tmp_path / "deberta-v3", family_texts)
    assert not (folder / "tokenizer.json").exists()
    tokenizer = qaexp_tokenizer(folder)
    assert tokenizer.is_fast
    encoded = tokenizer("Who?", "Anna Berg wrote it.", return_offsets_mapping=True)
    assert "token_type_ids" not in encoded
    assert encoded["input_ids"][0] == tokenizer.cls_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_chosen_per_model(family, checkpoints):
    from qaexp.config import ModelConfig
    from qaexp.modeling import describe_inputs, load_model

    cfg = ModelConfig(name_or_path=str(checkpoints(family)))
    model = load_model(cfg)
    assert model.config._attn_implementation == EXPECTED[family][0]
    assert f"attention {EXPECTED[family][0]} (chosen" in describe_inputs(cfg)


# --- end to end ------------------------------------------------------------------------------


def family_run_args(folder: Path) -> list[str]:
    return [*SINGLE_RUN, f"model.name_or_path={folder}", "model.init=pretrained"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_evaluates_predicts_and_reloads(family, checkpoints, tmp_path):
    import qaexp

    result = run_cli([*family_run_args(checkpoints(family)), "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    attention, token_types = EXPECTED[family]
    block = result.stderr
    assert f"attention {attention} (chosen" in block
    assert ("no token_type_ids" in block) != token_types
    assert "labels   100.00% of" in block and "eval answers lie in a window" in block
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["label_recovery"] == 1.0 and summary["eval_answers_reachable"] == 1.0

    checkpoint = tmp_path / "run" / "checkpoint"
    qa = qaexp.pipeline(str(checkpoint), device=-1, max_length=64, stride=16)
    answer = qa(question="Who wrote it?", context=TRICKY)
    assert answer["answer"] == answer["answer"].strip()
    assert TRICKY[answer["start"] : answer["end"]] == answer["answer"]
    assert not answer["answer"] or not TRICKY[answer["start"]].isspace()

    predicted = run_cli(
        [f"checkpoint={checkpoint}", "question=Who wrote it?", f"context={TRICKY}"],
        tmp_path,
        module="qaexp.predict",
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]


def test_deberta_trains_with_the_hf_engine(checkpoints, tmp_path):
    args = [*family_run_args(checkpoints("deberta-v3")), "trainer.engine=hf", "hydra.run.dir=r"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["label_recovery"] == 1.0


@pytest.mark.slow
@pytest.mark.processes
def test_xlm_roberta_trains_on_two_processes(checkpoints, tmp_path):
    """Two CPU workers: the label check and the windows agree across ranks."""
    from tests.conftest import run_qaexp

    args = [*family_run_args(checkpoints("xlm-roberta")), "hardware=cpu"]
    result = run_qaexp([*args, "hardware.num_processes=2", "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["label_recovery"] == 1.0


# --- bad input -------------------------------------------------------------------------------


def assert_refused(result, tmp_path, *phrases: str) -> None:
    """Exit 2, one paragraph naming `phrases`, no traceback, no run directory."""
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_attention_the_model_lacks_is_refused(checkpoints, tmp_path):
    args = [*family_run_args(checkpoints("deberta-v3")), "model.attn_implementation=sdpa"]
    result = run_cli([*args, "hydra.run.dir=run"], tmp_path)
    assert_refused(result, tmp_path, "model.attn_implementation=sdpa", "support eager")
    assert "corrupt" not in result.stderr


def test_max_length_beyond_the_positions_is_refused(checkpoints, tmp_path):
    args = [*family_run_args(checkpoints("electra")), "max_length=1024", "hydra.run.dir=run"]
    result = run_cli(args, tmp_path)
    assert_refused(result, tmp_path, "max_length=1024", "512 tokens", "max_length=512 or less")


def test_model_without_a_qa_class_is_refused(tmp_path, minilm_tokenizer):
    """A complete encoder checkpoint (BertGeneration) whose family has no QA head."""
    from transformers import BertGenerationConfig, BertGenerationEncoder

    folder = tmp_path / "encoder"
    config = BertGenerationConfig(
        vocab_size=len(minilm_tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertGenerationEncoder(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    result = run_cli([*family_run_args(folder), "hydra.run.dir=run"], tmp_path)
    assert_refused(result, tmp_path, "no question-answering class", "BertGenerationConfig")


def test_tokenizer_without_offsets_is_refused(tmp_path, tiny_qa_checkpoint):
    """A slow (Python) tokenizer gives no offset mapping."""
    folder = tmp_path / "slow"
    shutil.copytree(tiny_qa_checkpoint, folder)
    (folder / "tokenizer.json").unlink()
    settings = {
        "tokenizer_class": "BertJapaneseTokenizer",
        "word_tokenizer_type": "basic",
        "subword_tokenizer_type": "wordpiece",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    from qaexp.config import embedded_model_path

    shutil.copy(Path(embedded_model_path()) / "vocab.txt", folder)
    result = run_cli([*family_run_args(folder), "hydra.run.dir=run"], tmp_path)
    assert_refused(result, tmp_path, "no fast (Rust) tokenizer", "offset mappings")


def test_a_run_stops_when_labels_miss_their_answers(tmp_path):
    """Answers that start inside a word the tokenizer keeps whole ("7" of "1817"): no token
    span equals them, the label check names them and the run stops before training."""
    context = "The bridge over the river opened in 1817 and closed in 1901 after a flood."
    start = context.index("1817") + 3
    records = [
        {
            "id": f"q{i}",
            "context": context,
            "question": "When did it open?",
            "answers": {"text": ["7"], "answer_start": [start]},
        }
        for i in range(8)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    args = [
        *SINGLE_RUN,
        "data=files",
        f"data.train_file={data}",
        f"data.validation_file={data}",
        "hydra.run.dir=run",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    assert "Label check failed: only 0.00% of the 8 labelled" in result.stderr
    assert "q0: gold '7', labels give '1817'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # stopped before the run directory
    passing = run_cli([*args[:-1], "data.min_label_recovery=0", "hydra.run.dir=run2"], tmp_path)
    assert passing.returncode == 0, passing.stderr[-2000:]
    assert "labels   0.00% of 8 labelled train windows" in passing.stderr


def test_min_label_recovery_must_be_a_share():
    from omegaconf import OmegaConf

    from qaexp.checks import validate_settings
    from tests.conftest import compose

    cfg = OmegaConf.to_object(compose(["model=tiny", "data.min_label_recovery=1.5"]))
    with pytest.raises(QAExpError, match=r"data\.min_label_recovery=1\.5"):
        validate_settings(cfg)
