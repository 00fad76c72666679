"""Answering a question file as a stream: read lazily, answered in chunks, written as it goes.

    source = file_questions(path)              # JSON lines or CSV, one record at a time
    total, ids = scan(source)                  # pass 1: every record checked, nothing kept
    journal = Journal.open(answers_path, header, ids)  # what an earlier run of the command wrote
    answer_stream(qa, source, journal, total, chunk_size)
    predictions, ranked = journal.read(ids)    # -> the official {id: answer} JSON

Memory holds one chunk of records and the set of ids (for uniqueness and resuming), and at
the end the answers (to write the official JSON), never the file's contexts. A JSON list or an official SQuAD JSON file is one document, read whole
by `qaexp.predict.read_questions`, and then answered by the same loop.

Crash model (what holds if the process dies at any instant): the journal is append-only, and
each answer's line is written and flushed as it comes, and each chunk is fsynced before the
next chunk is answered. A
kill leaves whole lines for every chunk written before it and at most one torn line at the
end, which the next run of the same command drops before it appends; that run skips the
answered ids. A Ctrl-C stops between two lines' writes at worst, and says where to continue.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Protocol

import datasets
from tqdm.auto import tqdm

from qaexp.data import question_record
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.faults import crash_point

log = logging.getLogger(__name__)

STREAM_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
JOURNAL_VERSION = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    where: str  # "line 12" of a streamed file, "record 3" of a document: for messages


# A source is read once to check it and once to answer it: a callable gives a fresh iterator.
Source = Callable[[], Iterator[Question]]


class Answerer(Protocol):
    def answer(self, examples: datasets.Dataset) -> dict[str, list[dict]]: ...


def stream_format(path: Path) -> str | None:
    """'jsonl' or 'csv' for a file answered as a stream (by its suffix); None for a document."""
    return STREAM_FORMATS.get(path.suffix.lower())


def file_questions(path: Path, fmt: str) -> Source:
    """The questions of a JSON-lines or CSV file, read one record at a time."""
    read = _jsonl_questions if fmt == "jsonl" else _csv_questions
    return lambda: read(path)


def _jsonl_questions(path: Path) -> Iterator[Question]:
    number = 0
    try:
        with path.open(encoding="utf-8") as fh:
            position = 0
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise QAExpError(
                        f"input={path}: line {number} is not valid JSON ({err.msg}, column "
                        f"{err.colno}). Fix that line (one JSON object per line) and run again."
                    ) from err
                yield _question(record, position, f"input={path}: line {number}")
                position += 1
    except UnicodeDecodeError as err:
        raise QAExpError(f"input={path} is not UTF-8 text (after line {number}: {err}).") from err


def _csv_questions(path: Path) -> Iterator[Question]:
    # A context longer than the csv module's default cell limit (128 KiB) is still a context.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            yield from _csv_rows(path, reader)
    except UnicodeDecodeError as err:
        raise QAExpError(f"input={path} is not UTF-8 text ({err}).") from err


def _csv_rows(path: Path, reader: csv.DictReader) -> Iterator[Question]:
    try:
        columns = reader.fieldnames or []
        if not {"question", "context"} <= set(columns):
            raise QAExpError(
                f"input={path}: the CSV header (line 1) names the columns {columns}; it needs "
                "a 'question' and a 'context' column ('id' is optional). Add the header line "
                "and run again."
            )
        for position, row in enumerate(reader):
            where = f"input={path}: line {reader.line_num}"
            if None in row:
                raise QAExpError(
                    f"{where} has more cells than the header's {len(columns)} columns (a "
                    "comma in a text that is not quoted?). Quote that text and run again."
                )
            yield _question(row, position, where)
    except csv.Error as err:
        raise QAExpError(f"input={path}: line {reader.line_num} is not valid CSV ({err}).") from err


def _question(record: object, position: int, where: str) -> Question:
    """A checked record; its id is the record's "id", else its position (as for JSON lists)."""
    checked = question_record(record, where)
    qid = record.get("id")
    qid = str(position) if qid is None or qid == "" else str(qid)
    return Question(qid, checked["question"], checked["context"], where)


def document_questions(examples: datasets.Dataset) -> Source:
    """The questions of a document already read whole (JSON list, official SQuAD JSON)."""

    def rows() -> Iterator[Question]:
        columns = examples.select_columns(["id", "question", "context"])
        for i, row in enumerate(columns):
            yield Question(row["id"], row["question"], row["context"], f"record {i}")

    return rows


def scan(source: Source, name: str) -> tuple[int, set[str]]:
    """Pass 1: check every record (a bad one raises, naming its line) and that ids are unique,
    before anything is answered; the count and the ids."""
    ids: set[str] = set()
    for question in source():
        if question.id in ids:
            raise QAExpError(
                f"{question.where}: id {question.id!r} appears earlier too; ids must be unique "
                "(they key the answers). Give that record its own id and run again."
            )
        ids.add(question.id)
    if not ids:
        raise QAExpError(f"input={name} holds no questions.")
    return len(ids), ids


class Journal:
    """The answers written so far: a header line (what command made them), then one line
    per answered question, ``{"id", "answers": [{"answer", "score", "start", "end"}...]}``."""

    def __init__(self, path: Path, header: dict, answered: set[str]):
        self.path = path
        self.header = header
        self.answered = answered
        self._fh: IO[str] | None = None

    @classmethod
    def open(cls, path: Path, header: dict, ids: set[str]) -> Journal:
        """The journal at `path`, with what an earlier run of the same command wrote (a torn
        last line, from a kill in mid-write, is cut off). Written by other settings: started
        afresh when that command finished (every id of `ids` answered: its answers were
        complete, as an output file is replaced by a new command), else refused, since
        continuing would mix two commands' answers."""
        header = {"qaexp_answers": JOURNAL_VERSION, **header}
        if not path.exists():
            return cls(path, header, set())
        answered, keep, changed = _read_answered(path, header)
        if changed and ids <= answered:
            log.info(
                "%s holds the finished answers of another command (%s): answering again",
                path,
                changed,
            )
            path.unlink()
            return cls(path, header, set())
        if changed:
            raise QAExpError(
                f"{path} holds the unfinished answers of another command ({changed}); "
                "continuing would mix them. Run that command again to finish it, delete the "
                "file to answer everything with these settings, or choose another output=."
            )
        if keep < path.stat().st_size:
            log.warning("%s ended in a torn line (the last run died writing it): cut off", path)
            os.truncate(path, keep)
        return cls(path, header, answered)

    def append(self, answers: list[tuple[str, list[dict]]]) -> None:
        """Write one chunk's lines, each flushed, then fsync: on disk before the next chunk.
        A failed write (a full disk) is raised naming the journal."""
        try:
            self._append(answers)
        except OSError as err:
            if err.filename is not None:
                raise
            raise OSError(err.errno, err.strerror or str(err), str(self.path)) from err

    def _append(self, answers: list[tuple[str, list[dict]]]) -> None:
        if self._fh is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = self.path.open("a", encoding="utf-8")
            if new:
                self._fh.write(json.dumps(self.header, ensure_ascii=False) + "\n")
        for qid, ranked in answers:
            line = json.dumps({"id": qid, "answers": ranked}, ensure_ascii=False)
            self._fh.write(line + "\n")
            self._fh.flush()  # each answer reaches the file as it is written
            self.answered.add(qid)
            crash_point("answer_line")
        os.fsync(self._fh.fileno())
        crash_point("answer_chunk")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read(self, ids: set[str]) -> dict[str, list[dict]]:
        """The ranked answers of `ids`, in the order they were answered."""
        ranked = {}
        with self.path.open(encoding="utf-8") as fh:
            next(fh)  # the header
            for line in fh:
                record = json.loads(line)
                if record["id"] in ids:
                    ranked[record["id"]] = record["answers"]
        return ranked


def _read_answered(path: Path, header: dict) -> tuple[set[str], int, str]:
    """The ids answered in journal `path`, the length of its whole lines, and how the
    command that wrote it differs from `header` ("" when it does not)."""
    answered, keep, changed = set(), 0, ""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break  # a torn last line (a kill in mid-write): everything before it stands
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if number == 1:
                changed = _header_change(path, record, header)
            elif not isinstance(record, dict) or "id" not in record:
                raise QAExpError(
                    f"{path}: line {number} is not an answer line; the file was edited or is "
                    "damaged. Delete it (the answers are written again) or choose another "
                    "output=."
                )
            else:
                answered.add(record["id"])
            keep += len(raw)
    return answered, keep, changed


def _header_change(path: Path, found: object, wanted: dict) -> str:
    """How the header `found` differs from `wanted`, e.g. "top_k 1 there, 3 now"."""
    if not isinstance(found, dict) or found.get("qaexp_answers") != JOURNAL_VERSION:
        raise QAExpError(
            f"{path} exists but is not a qaexp answers file. Move it away, or choose "
            "another output= (the answers go to <output>.jsonl beside it)."
        )
    return "; ".join(
        f"{k} {found.get(k)!r} there, {v!r} now" for k, v in wanted.items() if found.get(k) != v
    )


def chunks(questions: Iterable[Question], size: int) -> Iterator[list[Question]]:
    it = iter(questions)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def as_examples(questions: list[Question]) -> datasets.Dataset:
    """`questions` as the id/question/context Dataset the pipeline answers."""
    return datasets.Dataset.from_dict(
        {
            "id": [q.id for q in questions],
            "question": [q.question for q in questions],
            "context": [q.context for q in questions],
        }
    )


def answer_chunk(qa: Answerer, todo: list[Question]) -> list[tuple[str, list[dict]]]:
    """The ranked answers of `todo`, in its order."""
    ranked = qa.answer(as_examples(todo))
    return [(q.id, ranked[q.id]) for q in todo]


def answer_stream(
    qa: Answerer, source: Source, journal: Journal, ids: set[str], chunk_size: int
) -> None:
    """Answer every question of `source` that `journal` lacks, `chunk_size` questions at a
    time, appending each chunk's answers; a progress bar on a terminal, questions/s at the end.

    Chunks are cut by position in the file, so a continued run answers the same chunks as an
    uninterrupted one would (the same batches, hence the same numbers)."""
    total, before = len(ids), len(ids & journal.answered)
    if before == total:
        log.info("All %d questions are already answered in %s", total, journal.path)
        return
    if before:
        log.info(
            "Continuing: %d of %d questions already answered in %s (skipped); answering the "
            "remaining %d",
            before,
            total,
            journal.path,
            total - before,
        )
    bar = tqdm(total=total, initial=before, unit="q", desc="answering", disable=None)
    began, done, todo, last = time.perf_counter(), 0, [], None
    try:
        for chunk in chunks(source(), chunk_size):
            todo = [q for q in chunk if q.id not in journal.answered]
            if not todo:
                continue
            journal.append(answer_chunk(qa, todo))
            done, last = done + len(todo), todo[-1]
            bar.update(len(todo))
    except KeyboardInterrupt:
        message = _where_to_continue(journal, ids, todo, last)
        raise RunInterrupted(message, EXIT_INTERRUPTED) from None
    except BaseException:
        log.error("%s", _where_to_continue(journal, ids, todo, last))
        raise
    finally:
        bar.close()
        journal.close()
    seconds = time.perf_counter() - began
    if not done:
        return
    log.info(
        "Answered %d questions in %.1f s: %.1f questions/s",
        done,
        seconds,
        done / seconds if seconds > 0 else 0.0,
    )


def _where_to_continue(
    journal: Journal, ids: set[str], chunk: list[Question], last: Question | None
) -> str:
    """Which answers are on disk, and the question a run of the same command starts from."""
    left = [q for q in chunk if q.id not in journal.answered]
    written = [q for q in chunk if q.id in journal.answered]
    last = written[-1] if written else last
    if left:
        place = f" from id {left[0].id!r} ({left[0].where})"
    elif last is not None:
        place = f" after id {last.id!r} ({last.where})"
    else:
        place = ""
    return (
        f"Stopped after {len(ids & journal.answered)} of {len(ids)} questions; their answers "
        f"are in {journal.path}. Run the same command again to continue{place}: answered ids "
        "are skipped."
    )
