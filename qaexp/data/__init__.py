"""Data: raw examples in the Hugging Face `squad` schema (id, title, context, question,
answers{text, answer_start}) from the Hub, official SQuAD JSON files or the bundled
synthetic generator, and the checks every record passes before it is used."""

from qaexp.data.answers import check_answers, count_unanswerable
from qaexp.data.checks import check_examples, question_record
from qaexp.data.sources import SPLITS, SQUAD_FEATURES, load_raw_datasets, load_squad_json

__all__ = [
    "SPLITS",
    "SQUAD_FEATURES",
    "check_answers",
    "check_examples",
    "count_unanswerable",
    "load_raw_datasets",
    "load_squad_json",
    "question_record",
]
