"""Data: load raw examples (Hub, official SQuAD JSON, synthetic) as ``datasets.Dataset``s in
the HF ``squad`` schema: id, title, context, question, answers{text, answer_start}.

Every source is materialised into the datasets cache (Arrow files with a stable
fingerprint), so feature building on top of it is cached and reused across runs.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import datasets

from qaexp.caches import verified_dataset
from qaexp.config import DataConfig, DataSource
from qaexp.errors import QAExpError
from qaexp.hub import ensure_hub_reachable

log = logging.getLogger(__name__)

SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)

SPLITS = ("train", "validation")


def load_raw_datasets(cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> datasets.DatasetDict:
    """The configured source's `splits` (both by default; evaluate-only runs ask for
    "validation" alone), each cut to ``max_*_samples`` (the first N examples)."""
    if cfg.source == DataSource.hub:
        raw = _load_hub(cfg)
    elif cfg.source == DataSource.json:
        files = {"train": cfg.train_file, "validation": cfg.validation_file}
        raw = datasets.DatasetDict(
            {s: load_squad_json(files[s], f"data.{s}_file", cfg.cache_dir) for s in splits}
        )
    else:
        raw = _load_synthetic(cfg, splits)
    raw = datasets.DatasetDict({split: raw[split] for split in splits})
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples}
    for split in splits:
        limit = limits[split]
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return raw


def _load_hub(cfg: DataConfig) -> datasets.DatasetDict:
    ensure_hub_reachable(f"The dataset data.hub_id={cfg.hub_id}")
    try:
        loaded = datasets.load_dataset(cfg.hub_id, cfg.hub_config, cache_dir=cfg.cache_dir)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise QAExpError(
            f"Could not load the dataset data.hub_id={cfg.hub_id} from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). Check the name, or work offline with "
            "data=squad_json data.train_file=PATH data.validation_file=PATH (official SQuAD "
            "JSON) or data=synthetic."
        ) from err
    missing = [s for s in (cfg.train_split, cfg.validation_split) if s not in loaded]
    if missing:
        raise QAExpError(
            f"The dataset {cfg.hub_id} has no split {missing[0]!r} (it has "
            f"{sorted(loaded)}); set data.train_split / data.validation_split."
        )
    return datasets.DatasetDict(
        {"train": loaded[cfg.train_split], "validation": loaded[cfg.validation_split]}
    )


def load_squad_json(path: str | None, key: str, cache_dir: str | None = None) -> datasets.Dataset:
    """An official SQuAD v1.1 JSON file as a flat Dataset (one row per question)."""
    if not path:
        raise QAExpError(
            f"{key} is not set: data=squad_json needs data.train_file=PATH and "
            "data.validation_file=PATH (official SQuAD v1.1 JSON files)."
        )
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise QAExpError(
            f"{key}={path}: no such file ({file}). Point it at an official SQuAD v1.1 JSON "
            "file, e.g. dev-v1.1.json."
        )
    stat = file.stat()
    try:
        return materialise(
            _iter_squad_json,
            cache_dir=cache_dir,
            # The file's identity and state are part of the cache key, so an edited file is
            # re-read while an unchanged one is reused.
            gen_kwargs={"path": str(file), "stamp": f"{stat.st_size}-{stat.st_mtime_ns}"},
        )
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, QAExpError):
            raise err.__cause__ from None
        raise


def _iter_squad_json(path: str, stamp: str) -> Iterator[dict]:
    del stamp  # only part of the cache key
    try:
        with open(path, encoding="utf-8") as fh:
            document = json.load(fh)
    except json.JSONDecodeError as err:
        raise QAExpError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})."
        ) from err
    except UnicodeDecodeError as err:
        raise QAExpError(f"{path} is not UTF-8 text ({err}).") from err
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise QAExpError(
            f'{path} is not official SQuAD JSON: expected {{"version": ..., "data": [...]}} '
            "at the top level."
        )
    for a, article in enumerate(document["data"]):
        paragraphs = _typed_field(article, "paragraphs", list, path, f"data[{a}]")
        title = _title(article, path, f"data[{a}]")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _typed_field(paragraph, "context", str, path, where)
            for q, qa in enumerate(_typed_field(paragraph, "qas", list, path, where)):
                yield _squad_record(qa, title, context, path, f"{where}.qas[{q}]")


def _field(record: object, name: str, path: str, where: str):
    if not isinstance(record, dict) or name not in record:
        raise QAExpError(f"{path}: the record at {where} has no field {name!r}.")
    return record[name]


def _typed_field(record: object, name: str, kind: type, path: str, where: str):
    """record[name], refused (naming the place) when missing, null or of another type."""
    value = _field(record, name, path, where)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise QAExpError(
            f"{path}: {where}.{name} must be a {kind.__name__}, got {value!r:.60} "
            f"({type(value).__name__})."
        )
    return value


def _title(article: object, path: str, where: str) -> str:
    title = article.get("title", "") if isinstance(article, dict) else ""
    if not isinstance(title, str):
        raise QAExpError(f"{path}: {where}.title must be a string, got {title!r:.60}.")
    return title


def _question_id(qa: object, path: str, where: str) -> str:
    """The id as a string: strings and integers only, so that no two ids can collide or
    split after conversion (null -> "None", 1.0 -> "1.0" beside 1 -> "1")."""
    value = _field(qa, "id", path, where)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise QAExpError(
            f"{path}: {where}.id must be a string or an integer, got {value!r:.60} "
            f"({type(value).__name__})."
        )
    return str(value)


def _answer(answer: object, path: str, where: str) -> tuple[str, int]:
    text = _typed_field(answer, "text", str, path, where)
    start = _typed_field(answer, "answer_start", int, path, where)
    return text, start


def _squad_record(qa: dict, title: str, context: str, path: str, where: str) -> dict:
    example_id = _question_id(qa, path, where)
    question = _typed_field(qa, "question", str, path, where)
    answers = qa.get("answers", []) if isinstance(qa, dict) else []
    if not isinstance(answers, list):
        raise QAExpError(f"{path}: {where}.answers must be a list, got {answers!r:.60}.")
    pairs = [_answer(a, path, f"{where}.answers[{i}]") for i, a in enumerate(answers)]
    return {
        "id": example_id,
        "title": title,
        "context": context,
        "question": question,
        "answers": {"text": [t for t, _ in pairs], "answer_start": [s for _, s in pairs]},
    }


def _load_synthetic(cfg: DataConfig, splits: tuple[str, ...]) -> datasets.DatasetDict:
    from qaexp.data.synthetic import iter_examples

    syn = cfg.synthetic
    sizes = {"train": syn.train_size, "validation": syn.eval_size}
    return datasets.DatasetDict(
        {
            split: materialise(
                iter_examples,
                cache_dir=cfg.cache_dir,
                gen_kwargs={
                    "num_examples": sizes[split],
                    "seed": syn.seed,
                    "split": split,
                    "long_context_fraction": syn.long_context_fraction,
                },
            )
            for split in splits
        }
    )


def materialise(generator, cache_dir: str | None, gen_kwargs: dict) -> datasets.Dataset:
    """The generator's records as a Dataset in the squad schema, materialised into the
    datasets cache; a cached copy that is damaged is rebuilt (qaexp.caches)."""
    from datasets.io.generator import GeneratorDatasetInputStream

    def build(fresh: bool) -> datasets.Dataset:
        stream = GeneratorDatasetInputStream(
            generator=generator, features=SQUAD_FEATURES, cache_dir=cache_dir, gen_kwargs=gen_kwargs
        )
        if fresh:
            shutil.rmtree(stream.builder.cache_dir, ignore_errors=True)
        return stream.read()

    return verified_dataset(build, f"data of {generator.__name__}({gen_kwargs})")
