"""Unicode normalisation: text in decomposed form (NFD: "e" + a combining accent) is brought
to NFC before answer offsets are checked or windows are built, with answer_start moved to
the same character of the normalised context, whether it was counted on the decomposed text
or on the composed one."""

from __future__ import annotations

import json
import unicodedata

import datasets
import pytest

from qaexp.data import SQUAD_FEATURES, check_examples
from tests.conftest import TINY_RUN, read_jsonl, run_cli

NAMES = ["Zoë", "Renée", "José", "Chloé", "Søren", "Françoise", "Émile", "Inès"]
PLACES = ["Besançon", "Orléans", "Nîmes", "Angoulême", "Sète"]


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def composed_records(count: int, prefix: str) -> list[dict]:
    """Records in NFC whose answer comes after several accented letters."""
    records = []
    for i in range(count):
        name, place = NAMES[i % len(NAMES)], PLACES[i % len(PLACES)]
        context = (
            f"Le café numéro {i} à {place} a été fondé en {1900 + i} par {name}, "
            f"qui préférait le thé très sucré."
        )
        answer = f"{1900 + i}"
        records.append(
            {
                "id": f"{prefix}-{i}",
                "title": "Cafés",
                "context": context,
                "question": f"En quelle année le café numéro {i} de {place} a-t-il été fondé ?",
                "answers": {"text": [answer], "answer_start": [context.index(answer)]},
            }
        )
    return records


def decomposed(records: list[dict], offsets_on: str) -> list[dict]:
    """`records` in NFD; answer_start counted on the NFD context (`offsets_on="nfd"`) or left
    as counted on the NFC one (`"nfc"`)."""
    out = []
    for record in records:
        context = nfd(record["context"])
        texts = [nfd(t) for t in record["answers"]["text"]]
        starts = record["answers"]["answer_start"]
        if offsets_on == "nfd":
            starts = [len(nfd(record["context"][:s])) for s in starts]
        out.append(
            {
                **record,
                "context": context,
                "question": nfd(record["question"]),
                "answers": {"text": texts, "answer_start": starts},
            }
        )
    return out


def as_dataset(records: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(records, features=SQUAD_FEATURES)


@pytest.mark.parametrize("offsets_on", ["nfd", "nfc"])
def test_decomposed_records_are_composed_with_their_answers_in_place(offsets_on):
    composed = composed_records(6, "q")
    raw = datasets.DatasetDict({"train": as_dataset(decomposed(composed, offsets_on))})
    checked, report = check_examples(raw)
    train = checked["train"]
    assert len(train) == 6 and report["train_misplaced_answers"] == 0
    for row, want in zip(train, composed, strict=True):
        assert row["context"] == want["context"] and row["question"] == want["question"]
        assert row["answers"] == want["answers"]
        (start,), (text,) = row["answers"]["answer_start"], row["answers"]["text"]
        assert row["context"][start : start + len(text)] == text


def test_a_start_that_fits_neither_form_is_still_left_out():
    record = decomposed(composed_records(2, "q"), "nfd")
    record[0]["answers"]["answer_start"] = [3]
    checked, report = check_examples(datasets.DatasetDict({"train": as_dataset(record)}))
    assert len(checked["train"]) == 1 and report["train_misplaced_answers"] == 1


def test_a_training_split_left_empty_is_refused_naming_the_reasons():
    records = composed_records(3, "q")
    for record in records:
        record["answers"]["answer_start"] = [1]
    from qaexp.errors import QAExpError

    with pytest.raises(QAExpError, match="every one of the 3 training examples") as err:
        check_examples(datasets.DatasetDict({"train": as_dataset(records)}))
    assert "answer_start" in str(err.value) and "NFC" in str(err.value)


def squad_json(records: list[dict]) -> dict:
    paragraphs = [
        {
            "context": r["context"],
            "qas": [
                {
                    "id": r["id"],
                    "question": r["question"],
                    "answers": [
                        {"text": t, "answer_start": s}
                        for t, s in zip(
                            r["answers"]["text"], r["answers"]["answer_start"], strict=True
                        )
                    ],
                }
            ],
        }
        for r in records
    ]
    return {"version": "1.1", "data": [{"title": "Cafés", "paragraphs": paragraphs}]}


@pytest.mark.parametrize("offsets_on", ["nfd", "nfc"])
def test_a_run_on_decomposed_squad_json_trains_on_every_example(tmp_path, offsets_on):
    for split, count in (("train", 48), ("dev", 16)):
        records = decomposed(composed_records(count, split), offsets_on)
        path = tmp_path / f"{split}.json"
        path.write_text(json.dumps(squad_json(records), ensure_ascii=False), encoding="utf-8")
    args = [
        *TINY_RUN,
        "data=squad_json",
        f"data.train_file={tmp_path / 'train.json'}",
        f"data.validation_file={tmp_path / 'dev.json'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.epochs=1",
        "hydra.run.dir=run",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_examples"] == 48 and summary["eval_examples"] == 16
    log = (tmp_path / "run" / "qaexp.log").read_text()
    assert "Unicode NFC" in log and "Leaving" not in log
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    predictions = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert all(p == nfc(p) for p in predictions.values())
