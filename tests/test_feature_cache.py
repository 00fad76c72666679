"""The feature cache across processes: a second run with the same data and tokenizer settings
builds no features, because every part of the cache key is the same in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host

# One "run": load an official-format SQuAD file, build train and eval windows, report what
# the cache key is made of and which cache files hold the windows.
BUILD = """
import json, sys
from transformers import AutoTokenizer
from qaexp.config import embedded_model_path
from qaexp.data import load_squad_json
from qaexp.features import build_features, tokenizer_fingerprint


path, cache_dir = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
examples = load_squad_json(path, "data.train_file", cache_dir)
files = []
for train in (True, False):
    features = build_features(examples, tokenizer, 64, 16, train=train)
    files += [f["filename"] for f in features.cache_files]
print(json.dumps({"tokenizer": tokenizer_fingerprint(tokenizer),
                  "examples": examples._fingerprint, "files": files}))
"""

CONTEXT = (
    "The Radium Institute was founded by Marie Curie in Paris. It opened in 1914, and its "
    "laboratories studied radioactivity and its medical uses for decades afterwards."
)


@pytest.fixture
def squad_file(tmp_path) -> Path:
    qas = [
        {"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
        for i, (q, a) in enumerate(
            [
                ("Who founded it?", "Marie Curie"),
                ("When did it open?", "1914"),
                ("Where is it?", "Paris"),
            ]
        )
    ]
    document = {
        "version": "1.1",
        "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document))
    return path


def build_in_fresh_process(squad_file: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(squad_file), str(cache_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_reuses_the_cached_features(squad_file, tmp_path):
    cache = tmp_path / "cache"
    first = build_in_fresh_process(squad_file, cache)
    files = [Path(f) for f in first["files"]]
    assert len(files) == 2 and all(f.is_file() and cache in f.parents for f in files)
    written = {f: f.stat().st_mtime_ns for f in files}

    second = build_in_fresh_process(squad_file, cache)
    # every part of the key is stable across processes ...
    assert second["tokenizer"] == first["tokenizer"]
    assert second["examples"] == first["examples"]
    # ... so the same files are read back, not written again
    assert second["files"] == first["files"]
    assert {f: f.stat().st_mtime_ns for f in files} == written


def test_tokenizer_fingerprint_ignores_the_state_left_by_the_last_call(minilm_tokenizer):
    import copy

    from qaexp.features import prepare_train_features, tokenizer_fingerprint

    tokenizer = copy.deepcopy(minilm_tokenizer)
    fresh = tokenizer_fingerprint(tokenizer)
    examples = {
        "id": ["q0"],
        "question": ["Who founded it?"],
        "context": [CONTEXT],
        "answers": [{"text": ["Marie Curie"], "answer_start": [CONTEXT.index("Marie Curie")]}],
    }
    prepare_train_features(examples, tokenizer, max_length=32, stride=8)
    assert tokenizer_fingerprint(tokenizer) == fresh
    tokenizer.padding_side = "left"  # this one does change the windows
    assert tokenizer_fingerprint(tokenizer) != fresh
