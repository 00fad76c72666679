"""Your own data: flat JSON Lines / CSV / Parquet files (data=files), column mapping, Hub
datasets mapped the same way, the official nested JSON (v1.1 and v2.0), and every bad-data
case with its message."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from qaexp.config import ColumnsConfig, DataConfig, DataSource
from qaexp.data import check_answers, check_examples, load_raw_datasets
from qaexp.errors import QAExpError
from tests.conftest import SQUAD_DIR, TINY_RUN, run_qaexp

QUESTIONS = 300  # of the official dev set, written in every format


def files_config(train: Path | None, validation: Path, **data) -> DataConfig:
    columns = ColumnsConfig(**data.pop("columns", {}))
    return DataConfig(
        source=DataSource.files,
        train_file=str(train or validation),
        validation_file=str(validation),
        columns=columns,
        **data,
    )


def load_validation(path: Path, **data) -> datasets.Dataset:
    return load_raw_datasets(files_config(None, path, **data), ("validation",))["validation"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [
    {
        "id": "q1",
        "title": "T",
        "context": "Ada Lovelace was born in London.",
        "question": "Where was Ada born?",
        "answers": {"text": ["London"], "answer_start": [25]},
    },
    {
        "id": "q2",
        "title": "T",
        "context": "Ada Lovelace was born in London.",
        "question": "When did Ada die?",
        "answers": {"text": [], "answer_start": []},
    },
]


# --- the same 300 official questions in every format -------------------------------------


@pytest.fixture(scope="module")
def official_300():
    if not (SQUAD_DIR / "dev-v1.1.json").is_file():
        pytest.skip(f"SQuAD JSON not found in {SQUAD_DIR}")
    cfg = DataConfig(
        source=DataSource.json,
        validation_file=str(SQUAD_DIR / "dev-v1.1.json"),
        max_eval_samples=QUESTIONS,
    )
    return load_raw_datasets(cfg, ("validation",))["validation"]


@pytest.fixture(scope="module")
def format_files(official_300, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """The 300 questions as JSON Lines (nested answers), CSV (answers in two flat columns,
    renamed question/context columns) and Parquet (nested answers), with their mappings."""
    folder = tmp_path_factory.mktemp("formats")
    frame = official_300.to_pandas()
    jsonl = write_jsonl(folder / "dev.jsonl", official_300.to_list())
    flat = frame.drop(columns=["answers"]).rename(columns={"question": "q", "context": "passage"})
    # CSV holds one answer per row: the first gold answer (scoring sees the first only).
    flat["answer"] = [a["text"][0] for a in official_300["answers"]]
    flat["start"] = [a["answer_start"][0] for a in official_300["answers"]]
    flat.to_csv(folder / "dev.csv", index=False)
    official_300.to_parquet(str(folder / "dev.parquet"))
    csv_columns = {
        "question": "q",
        "context": "passage",
        "answer_text": "answer",
        "answer_start": "start",
    }
    return {
        "jsonl": (jsonl, {}),
        "csv": (folder / "dev.csv", {"columns": csv_columns}),
        "parquet": (folder / "dev.parquet", {}),
    }


def first_answers(examples: datasets.Dataset) -> datasets.Dataset:
    def first(row: dict) -> dict:
        a = row["answers"]
        return {"answers": {"text": a["text"][:1], "answer_start": a["answer_start"][:1]}}

    return examples.map(first)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_give_the_official_records(fmt, format_files, official_300):
    path, data = format_files[fmt]
    loaded = load_validation(path, **data)
    expected = first_answers(official_300) if fmt == "csv" else official_300
    assert loaded.features == official_300.features
    assert loaded.to_list() == expected.to_list()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_give_the_same_windows_and_scores(
    fmt, format_files, official_300, minilm_tokenizer
):
    from qaexp.evaluation import AnswerSearch, score_logits
    from qaexp.features import build_features

    path, data = format_files[fmt]
    loaded = load_validation(path, **data)
    windows = build_features(loaded, minilm_tokenizer, 256, 64, train=False)
    reference = build_features(official_300, minilm_tokenizer, 256, 64, train=False)
    assert len(windows) == len(reference) > QUESTIONS
    assert windows.to_dict() == reference.to_dict()
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=(2, len(windows), 256)).astype(np.float32)
    search = AnswerSearch(n_best=20, max_answer_length=30)
    official_golds = {r["id"]: r["answers"]["text"] for r in official_300}
    expected = score_logits(official_300, reference, start, end, official_golds, search)
    golds = {r["id"]: r["answers"]["text"] for r in loaded}
    result = score_logits(loaded, windows, start, end, golds, search)
    assert result.predictions == expected.predictions
    if fmt != "csv":  # the CSV keeps one gold answer per question, so scores may be lower
        assert (result.exact_match, result.f1) == (expected.exact_match, expected.f1)
    assert 0 < expected.f1 < 100


# --- column mapping ---------------------------------------------------------------------


def test_jsonl_column_mapping_and_flat_answers(tmp_path):
    records = [
        {
            "qid": r["id"],
            "query": r["question"],
            "passage": r["context"],
            "answer": r["answers"]["text"][0] if r["answers"]["text"] else None,
            "offset": r["answers"]["answer_start"][0] if r["answers"]["text"] else None,
        }
        for r in RECORDS
    ]
    path = write_jsonl(tmp_path / "mine.jsonl", records)
    columns = {
        "id": "qid",
        "question": "query",
        "context": "passage",
        "answer_text": "answer",
        "answer_start": "offset",
    }
    loaded = load_validation(path, columns=columns)
    assert loaded.to_list() == [dict(r, title="") for r in RECORDS]


def test_csv_unanswerable_rows_and_is_impossible(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,context,question,text,start,is_impossible\n"
        'a,"Ada was born in London.",Where?,London,16,false\n'
        'b,"Ada was born in London.",When?,,,false\n'
        'c,"Ada was born in London.",Who?,Ada,0,true\n'
    )
    loaded = load_validation(path, columns={"answer_text": "text", "answer_start": "start"})
    assert [a["text"] for a in loaded["answers"]] == [["London"], [], []]
    assert loaded["title"] == ["", "", ""]
    raw = datasets.DatasetDict({"validation": loaded})
    assert check_answers(DataConfig(), raw) is True  # detected: v2.0


def test_hub_dataset_with_column_mapping(monkeypatch):
    """The Hub code path (data.hub_id + data.columns.*) with the download replaced."""
    from qaexp.data import sources

    def fake_load(hub_id, config, cache_dir=None):
        assert hub_id == "someone/qa"
        split = datasets.Dataset.from_dict(
            {
                "uid": ["x"],
                "passage": ["Paris is in France."],
                "query": ["Where is Paris?"],
                "gold": [{"text": ["France"], "answer_start": [12]}],
            }
        )
        return datasets.DatasetDict({"train": split, "validation": split})

    monkeypatch.setattr(sources, "ensure_hub_reachable", lambda what: None)
    monkeypatch.setattr(sources.datasets, "load_dataset", fake_load)
    cfg = DataConfig(
        hub_id="someone/qa",
        columns=ColumnsConfig(id="uid", context="passage", question="query", answers="gold"),
    )
    raw = load_raw_datasets(cfg)
    assert raw["validation"][0]["answers"] == {"text": ["France"], "answer_start": [12]}
    assert raw["train"][0]["id"] == "x"


def test_data_groups_compose():
    from tests.conftest import compose

    files = compose(["data=files", "data.train_file=a.jsonl", "data.validation_file=b.csv"])
    assert files.data.source == "files" and files.data.allow_unanswerable is None
    v2 = compose(["data=squad_v2"])
    assert v2.data.hub_id == "rajpurkar/squad_v2" and v2.data.allow_unanswerable is True
    assert compose(["null_score_diff_threshold=1.5"]).null_score_diff_threshold == 1.5


# --- bad data ---------------------------------------------------------------------------


def test_missing_mapped_column_lists_the_file_columns(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": "Where?", "context": "c", "answers": {}}])
    with pytest.raises(QAExpError) as err:
        load_validation(path)
    message = str(err.value)
    assert "data.columns.question=question" in message
    assert "['q', 'context', 'answers']" in message and "data.validation_file=" in message


def test_flat_answer_columns_need_both(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "q", "context": "c", "t": "c"}])
    with pytest.raises(QAExpError, match="data.columns.answer_start"):
        load_validation(path, columns={"answer_text": "t"})


def test_nested_file_given_to_the_flat_loader(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": []}]}))
    with pytest.raises(QAExpError, match="use data=squad_json"):
        load_validation(path)


def test_flat_file_given_to_the_nested_loader(tmp_path):
    from qaexp.data import load_squad_json

    jsonl = write_jsonl(tmp_path / "mine.json", RECORDS)
    with pytest.raises(QAExpError, match="JSON Lines.*use data=files"):
        load_squad_json(str(jsonl), "data.validation_file")
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(RECORDS))
    with pytest.raises(QAExpError, match="flat records: use data=files"):
        load_squad_json(str(listed), "data.validation_file")


@pytest.mark.parametrize(
    "name, text", [("empty.csv", "id,context,question,answers\n"), ("empty.jsonl", "")]
)
def test_file_with_no_questions(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(QAExpError, match=f"{name} holds no questions"):
        load_validation(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(QAExpError, match=r"unknown file type '\.xlsx'.*\.jsonl"):
        load_validation(path)


def test_nested_answers_in_a_csv(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("id,context,question,answers\na,ctx,q,\"{'text': ['c']}\"\n")
    with pytest.raises(QAExpError, match="data.columns.answer_text=NAME"):
        load_validation(path)


def _raw(records: list[dict], split: str = "validation") -> datasets.DatasetDict:
    from qaexp.data import SQUAD_FEATURES

    return datasets.DatasetDict({split: datasets.Dataset.from_list(records, SQUAD_FEATURES)})


def test_empty_context():
    raw = _raw([dict(RECORDS[0], context="  ")])
    with pytest.raises(QAExpError, match="1 validation example.*empty context.*'q1'"):
        check_answers(DataConfig(), raw)


def test_more_texts_than_starts():
    raw = _raw([dict(RECORDS[0], answers={"text": ["London", "L"], "answer_start": [25]})])
    with pytest.raises(QAExpError, match="2 texts, 1 starts"):
        check_answers(DataConfig(), raw)


def test_v2_data_with_v1_settings_names_the_key():
    raw = _raw(RECORDS)
    with pytest.raises(QAExpError, match=r"data.allow_unanswerable=false.*1 of 2 validation"):
        check_answers(DataConfig(allow_unanswerable=False), raw)
    assert check_answers(DataConfig(), raw) is True
    assert check_answers(DataConfig(), _raw(RECORDS[:1])) is False
    assert check_answers(DataConfig(allow_unanswerable=True), _raw(RECORDS[:1])) is True


def test_misplaced_start_left_out_of_training_unanswerable_kept():
    misplaced = dict(RECORDS[0], id="q3", answers={"text": ["London"], "answer_start": [3]})
    raw = _raw([*RECORDS, misplaced], split="train")
    cleaned, report = check_examples(raw, allow_unanswerable=True)
    assert report["train_misplaced_answers"] == 1 and report["train_without_answer"] == 0
    assert cleaned["train"]["id"] == ["q1", "q2"]


def test_bad_file_exits_2_with_one_paragraph(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [{"q": "Where?", "context": "c", "answers": {}}])
    result = run_qaexp(
        [
            *TINY_RUN,
            "data=files",
            f"data.train_file={path}",
            f"data.validation_file={path}",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "data.columns.question=question" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
