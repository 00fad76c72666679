"""Ask a trained model questions from the command line (the `qaexp.pipeline` behind it).

    python -m qaexp.predict checkpoint=PATH question="Who wrote it?" context="..."
    python -m qaexp.predict checkpoint=PATH input=questions.jsonl [output=answers.json] [top_k=3]

One question prints its answer, score and character span. ``input=FILE`` answers every
question of a JSON-lines (``.jsonl``) or CSV (``.csv``, columns ``id``?, ``question``,
``context``) file, of a JSON list of ``{"id"?, "question", "context"}`` records, or of an
official SQuAD JSON file, ``chunk_size`` questions at a time, and writes ``{id: answer}``
(the official SQuAD prediction format) to ``output`` (default: ``<input>.predictions.json``
next to the input); with ``top_k`` > 1 also the ranked answers with scores and spans to
``<output>.nbest.json``. When the file holds gold answers (SQuAD JSON), the log adds EM/F1
against them (SQuAD v2.0 exact/f1 when some questions have none).

JSON lines and CSV are streamed (`qaexp.serving.stream`): read lazily, every line checked
before the model loads, a progress bar on a terminal and questions/s at the end. Answers are
appended as they come to ``<output>.jsonl`` (``output`` without its suffix), one line per
question with its ranked answers; ``output`` is written from it at the end. A crash or
Ctrl-C leaves the answers written so far; running the same command again continues after
them (it skips answered ids and says so).

A checkpoint trained with unanswerable questions (SQuAD v2.0) answers "" ("no answer") when
its null score beats the best span by more than the threshold recorded with it
(``null_threshold.json``); ``handle_impossible_answer=true|false`` and
``null_score_diff_threshold=X`` override that.

A folder written by ``python -m qaexp.export`` answers through ONNX Runtime on the CPU, with
the same windows and post-processing; ``backend=onnx`` (or ``onnx-int8``) on a checkpoint
answers with the export beside it, ``backend=torch`` insists on PyTorch.

Arguments are ``key=value`` words, read verbatim: a question or context may hold commas,
colons, quotes or ``$``, which a Hydra override would try to parse. Bad input gets one
paragraph on stderr and exit code 2, as in ``python -m qaexp``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import get_type_hints

import datasets

from qaexp.config import ANSWER_BATCH_SIZE, MAX_ANSWER_LENGTH, MAX_LENGTH, N_BEST, STRIDE
from qaexp.data import load_squad_json, question_record
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.metrics import squad_metrics, squad_v2_metrics
from qaexp.serving.stream import (
    Journal,
    Source,
    answer_stream,
    as_examples,
    document_questions,
    file_questions,
    scan,
    stream_format,
)
from qaexp.tracking.rundir import write_json_atomic

log = logging.getLogger("qaexp.predict")

USAGE = (
    "usage: python -m qaexp.predict checkpoint=PATH_OR_HUB_ID "
    "(question=TEXT context=TEXT | input=FILE [output=FILE]) "
    f"[top_k=1] [max_length={MAX_LENGTH}] [stride={STRIDE}] "
    f"[max_answer_length={MAX_ANSWER_LENGTH}] [n_best={N_BEST}] "
    f"[batch_size={ANSWER_BATCH_SIZE}] [chunk_size={ANSWER_BATCH_SIZE}] [device=auto] "
    "[handle_impossible_answer=auto] [null_score_diff_threshold=X] "
    "[backend=auto|torch|onnx|onnx-int8]"
)


@dataclasses.dataclass
class PredictConfig:
    checkpoint: str | None = None  # a checkpoint folder (a run's checkpoint/) or a Hub id
    question: str | None = None
    context: str | None = None
    input: str | None = None  # JSON list, JSON lines, or official SQuAD JSON
    output: str | None = None  # default: <input>.predictions.json next to the input
    top_k: int = 1
    max_length: int = MAX_LENGTH
    stride: int = STRIDE
    max_answer_length: int = MAX_ANSWER_LENGTH
    n_best: int = N_BEST
    batch_size: int = ANSWER_BATCH_SIZE
    chunk_size: int = ANSWER_BATCH_SIZE  # questions answered (and written) together
    device: str = "auto"  # auto (GPU when there is one), cpu, cuda, cuda:N
    # SQuAD v2.0: auto = on when the checkpoint recorded a null threshold; true; false
    handle_impossible_answer: str = "auto"
    null_score_diff_threshold: float | None = None  # None: the checkpoint's recorded one
    # auto: an exported folder (python -m qaexp.export) via ONNX Runtime, else PyTorch;
    # torch; onnx / onnx-int8: the export written beside the checkpoint
    backend: str = "auto"


def parse_args(argv: list[str]) -> PredictConfig:
    """`key=value` words into a PredictConfig; integers are checked, text is kept verbatim."""
    types = get_type_hints(PredictConfig)
    values: dict[str, object] = {}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or key not in types:
            known = ", ".join(types)
            raise QAExpError(f"{word!r} is not a known key=value argument (keys: {known}). {USAGE}")
        if types[key] is int:
            try:
                values[key] = int(value)
            except ValueError:
                raise QAExpError(f"{key}={value}: must be an integer.") from None
        elif key == "null_score_diff_threshold":
            values[key] = _finite_float(key, value)
        else:
            values[key] = value
    cfg = PredictConfig(**values)
    if cfg.chunk_size < 1:
        raise QAExpError(f"chunk_size={cfg.chunk_size}: must be an integer of at least 1.")
    if cfg.handle_impossible_answer not in IMPOSSIBLE_CHOICES:
        raise QAExpError(
            f"handle_impossible_answer={cfg.handle_impossible_answer}: must be one of "
            f"{', '.join(IMPOSSIBLE_CHOICES)}."
        )
    if not cfg.checkpoint:
        raise QAExpError(f"checkpoint=PATH is required. {USAGE}")
    single = cfg.question is not None or cfg.context is not None
    if single == (cfg.input is not None):
        raise QAExpError(f"Give either question= and context=, or input=FILE. {USAGE}")
    if single and (cfg.question is None or cfg.context is None):
        raise QAExpError("question= needs a context= to answer from, and context= a question=.")
    return cfg


IMPOSSIBLE_CHOICES = {"auto": None, "true": True, "false": False}


def _finite_float(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number):
        raise QAExpError(f"{key}={value}: must be a finite number.")
    return number


def _is_squad_json(document: object) -> bool:
    return isinstance(document, dict) and isinstance(document.get("data"), list)


def _records_from_json(path: Path, document: object) -> list[object]:
    if not isinstance(document, list):
        raise QAExpError(
            f"input={path}: expected a JSON list of {{question, context}} records, JSON lines, "
            'or official SQuAD JSON ({"data": [...]}), got a JSON '
            f"{type(document).__name__}."
        )
    return document


def _as_dataset(path: Path, records: list[object]) -> datasets.Dataset:
    """Records as a Dataset with id/question/context/answers (ids default to positions)."""
    ids, questions, contexts = [], [], []
    for i, record in enumerate(records):
        checked = question_record(record, f"input={path}: record {i}")
        ids.append(str(record.get("id", i)))
        questions.append(checked["question"])
        contexts.append(checked["context"])
    if not ids:
        raise QAExpError(f"input={path} holds no questions.")
    return datasets.Dataset.from_dict({"id": ids, "question": questions, "context": contexts})


def _read_whole(source: Source, name: str) -> datasets.Dataset:
    """A streamed file's questions, checked and kept whole (for `read_questions`)."""
    scan(source, name)
    return as_examples(list(source()))


def _input_path(file: str) -> Path:
    path = Path(file).expanduser()
    if not path.is_file():
        raise QAExpError(f"input={file}: no such file ({path.resolve()}).")
    return path


def read_questions(file: str) -> datasets.Dataset:
    """The questions of `file`, whole: JSON list, JSON lines, CSV, or official SQuAD JSON
    (with answers). `python -m qaexp.predict` streams JSON lines and CSV instead."""
    path = _input_path(file)
    fmt = stream_format(path)
    if fmt is not None:
        return _read_whole(file_questions(path, fmt), file)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise QAExpError(f"input={file} is not UTF-8 text ({err}).") from err
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # "Extra data": several JSON values, i.e. JSON lines
            raise QAExpError(
                f"input={file} is not valid JSON (line {err.lineno}, column {err.colno}: "
                f"{err.msg})."
            ) from err
        return _read_whole(file_questions(path, "jsonl"), file)
    if _is_squad_json(document):
        examples = load_squad_json(str(path), "input")
    else:
        examples = _as_dataset(path, _records_from_json(path, document))
    if len(set(examples["id"])) != len(examples):
        raise QAExpError(f"input={file}: ids must be unique; some ids appear twice.")
    return examples


def open_questions(file: str) -> tuple[Source, set[str], datasets.Dataset | None]:
    """The questions of `file` as a source to answer, their ids (every record checked), and
    the whole document when it was read whole (JSON, SQuAD JSON: it may hold gold answers)."""
    path = _input_path(file)
    fmt = stream_format(path)
    if fmt is not None:
        source, examples = file_questions(path, fmt), None
    else:
        examples = read_questions(file)
        source = document_questions(examples)
    _, ids = scan(source, file)
    return source, ids, examples


def default_output(cfg: PredictConfig) -> Path:
    if cfg.output:
        return Path(cfg.output).expanduser()
    source = Path(cfg.input).expanduser()
    return source.with_name(f"{source.stem}.predictions.json")


def check_writable(output: Path) -> None:
    """Refuse an output that cannot be written before any answer is computed."""
    probe = output.with_name(f".{output.name}.{os.getpid()}.probe")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise QAExpError(
            f"output={output}: cannot write there ({err.strerror or err}). Choose a folder "
            "you can write to."
        ) from err


def show(answers: dict | list) -> None:
    """Print one question's answer(s): stdout is this tool's product, so print, not log."""
    ranked = answers if isinstance(answers, list) else [answers]
    if not ranked or not ranked[0]["answer"]:
        print("no answer found in the context")
        return
    for rank, a in enumerate(ranked, start=1):
        prefix = f"{rank}. " if len(ranked) > 1 else ""
        print(f"{prefix}answer: {a['answer']}")
        print(
            f"{' ' * len(prefix)}score: {a['score']:.4f}  span: characters {a['start']}-{a['end']}"
        )


def journal_path(output: Path) -> Path:
    """Where the answers stream to: ``output`` with ``.jsonl`` for its suffix."""
    if output.suffix == ".jsonl":
        return output.with_suffix(".answers.jsonl")
    return output.with_suffix(".jsonl")


def journal_header(cfg: PredictConfig) -> dict:
    """What makes the answers: a continued run must match it (batch_size, chunk_size and
    device change only how fast they come)."""
    checkpoint = Path(cfg.checkpoint).expanduser()
    return {
        "input": str(Path(cfg.input).expanduser().resolve()),
        "checkpoint": str(checkpoint.resolve()) if checkpoint.exists() else cfg.checkpoint,
        **{
            key: getattr(cfg, key)
            for key in (
                "top_k",
                "max_length",
                "stride",
                "max_answer_length",
                "n_best",
                "handle_impossible_answer",
                "null_score_diff_threshold",
                "backend",
            )
        },
    }


def write_predictions(journal: Journal, ids: set[str], cfg: PredictConfig) -> dict[str, str]:
    """The official ``{id: answer}`` JSON (and the n-best lists), from the journal."""
    ranked = journal.read(ids)
    predictions = {
        qid: (answers[0]["answer"] if answers else "") for qid, answers in ranked.items()
    }
    output = default_output(cfg)
    write_json_atomic(output, predictions)
    log.info("Wrote %d predictions to %s", len(predictions), output)
    if cfg.top_k > 1:
        nbest = output.with_name(f"{output.stem.removesuffix('.predictions')}.nbest.json")
        write_json_atomic(nbest, ranked)
        log.info("Wrote the %d best answers of each question to %s", cfg.top_k, nbest)
    return predictions


def log_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    """EM/F1 against the file's gold answers: SQuAD v2.0 exact/f1 over every question when
    some have no answer, else SQuAD v1.1 over the questions with answers."""
    if any(not golds for golds in references.values()):
        scores = squad_v2_metrics(predictions, references)
        exact, f1, name = scores["exact"], scores["f1"], "SQuAD v2.0"
    else:
        scores = squad_metrics(predictions, references)
        exact, f1, name = scores["exact_match"], scores["f1"], "SQuAD v1.1"
    log.info(
        "Against the file's answers (%d questions): EM %.2f F1 %.2f (%s)",
        len(references),
        exact,
        f1,
        name,
    )


def run(cfg: PredictConfig) -> None:
    from qaexp.answering import pipeline  # torch and transformers: only once input is checked

    if cfg.input is not None:  # fail fast: every record, the output, an earlier run's answers
        source, ids, examples = open_questions(cfg.input)
        output = default_output(cfg)
        check_writable(output)
        journal = Journal.open(journal_path(output), journal_header(cfg), ids)
    device = None if cfg.device == "auto" else cfg.device
    qa = pipeline(
        cfg.checkpoint,
        device=device,
        top_k=cfg.top_k,
        max_length=cfg.max_length,
        stride=cfg.stride,
        max_answer_len=cfg.max_answer_length,
        n_best=cfg.n_best,
        batch_size=cfg.batch_size,
        handle_impossible_answer=IMPOSSIBLE_CHOICES[cfg.handle_impossible_answer],
        null_score_diff_threshold=cfg.null_score_diff_threshold,
        backend=cfg.backend,
    )
    if cfg.input is None:
        show(qa(question=cfg.question, context=cfg.context))
        return
    log.info("Answering %d questions from %s", len(ids), cfg.input)
    answer_stream(qa, source, journal, ids, cfg.chunk_size)
    predictions = write_predictions(journal, ids, cfg)
    if examples is not None and "answers" in examples.column_names:
        log_scores(predictions, {r["id"]: r["answers"]["text"] for r in examples})


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return
    try:
        run(parse_args(argv))
    except RunInterrupted as err:  # Ctrl-C while answering a file: where to continue
        log.error("%s", err)
        sys.exit(err.exit_code)
    except QAExpError as err:
        log.error("%s", err)
        sys.exit(2)
    except OSError as err:  # a write that failed after the output was checked: a full disk
        if not err.filename:
            raise
        code = f" ({errno.errorcode.get(err.errno, err.errno)})" if err.errno else ""
        log.error(
            "Writing %s failed: %s%s. Free space (or choose another output=) and run the "
            "same command again: it keeps the answers already on disk and drops a "
            "half-written one; no output file is left half-written.",
            err.filename,
            err.strerror or err,
            code,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
