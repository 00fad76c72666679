"""Batching: length-grouped training order, per-batch padding, and evaluation that gives the
same answers whether windows are padded per batch or to max_length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qaexp.batching import LengthGroupedSampler, make_eval_loader, make_train_loader
from qaexp.config import TrainerConfig


def sampler_batches(lengths, batch_size, seed=0, group_batches=4):
    generator = torch.Generator().manual_seed(seed)
    sampler = LengthGroupedSampler(np.asarray(lengths), batch_size, generator, group_batches)
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)], sampler


@pytest.fixture(scope="module")
def lengths():
    return np.random.default_rng(0).integers(20, 385, size=1003)


def test_every_window_once_per_epoch_in_whole_batches(lengths):
    batches, sampler = sampler_batches(lengths, 16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths))) and len(sampler) == len(lengths)
    # only the last batch is short, so the loader's slices of 16 are the sampler's batches
    assert [len(b) for b in batches[:-1]] == [16] * (len(batches) - 1)
    assert len(batches[-1]) == len(lengths) % 16


def test_grouping_cuts_padding_and_longest_batch_comes_first(lengths):
    grouped, _ = sampler_batches(lengths, 16, group_batches=50)
    rng = np.random.default_rng(1)
    shuffled = np.array_split(rng.permutation(len(lengths)), len(grouped))
    padded = sum(len(b) * lengths[b].max() for b in grouped)
    padded_random = sum(len(b) * lengths[b].max() for b in shuffled)
    assert lengths.sum() / padded > 0.95  # >95% real tokens (sorted groups of 50 batches)
    assert padded < 0.8 * padded_random
    assert lengths[grouped[0]].max() == lengths.max()


def test_batch_order_is_shuffled_not_a_long_to_short_ramp(lengths):
    batches, _ = sampler_batches(lengths, 16, group_batches=50)
    widths = np.array([lengths[b].max() for b in batches[:-1]])
    falls = (np.diff(widths) < 0).mean()
    # a ramp (transformers' order) falls at ~49 of every 50 steps; shuffled, about half
    assert 0.3 < falls < 0.7


def test_order_is_seeded_and_changes_every_epoch(lengths):
    first, sampler = sampler_batches(lengths, 16, seed=3)
    again, _ = sampler_batches(lengths, 16, seed=3)
    assert first == again
    second_epoch = list(sampler)
    assert second_epoch != [i for b in first for i in b]


def test_tiny_and_empty_inputs():
    batches, _ = sampler_batches([5, 9, 7], 16)
    assert sorted(batches[0]) == [0, 1, 2]
    assert sampler_batches([], 16)[0] == []


SENTENCES = [
    "Marie Curie was born in Warsaw in 1867.",
    "She moved to Paris in 1891 to study physics.",
    "In 1903 she shared the Nobel Prize in Physics with Pierre Curie and Henri Becquerel.",
    "She later founded the Radium Institute, which opened in 1914.",
    "Her daughter Irene Joliot-Curie also won a Nobel Prize, in 1935.",
]
QUESTIONS = ["Where was she born?", "When did the institute open?", "Who won in 1935?"]


@pytest.fixture(scope="module")
def eval_setup(minilm_tokenizer):
    """Eval windows of contexts from one to five sentences (so windows differ in length) and
    a tiny random BERT."""
    import datasets
    from omegaconf import OmegaConf

    from qaexp.features import build_features
    from qaexp.modeling import load_model
    from tests.conftest import compose

    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for n in range(1, len(SENTENCES) + 1):
        for q, question in enumerate(QUESTIONS):
            context = " ".join(SENTENCES[:n])
            rows["id"].append(f"{n}-{q}")
            rows["title"].append("curie")
            rows["context"].append(context)
            rows["question"].append(question)
            rows["answers"].append({"text": [context[:6]], "answer_start": [0]})
    examples = datasets.Dataset.from_dict(rows)
    features = build_features(examples, minilm_tokenizer, 64, 16, train=False)
    cfg = OmegaConf.to_object(compose(["model=tiny", "max_length=64"]))
    torch.manual_seed(0)
    model = load_model(cfg.model).eval()
    return cfg, examples, features, model


def test_batches_are_padded_to_their_longest_window_only(eval_setup, minilm_tokenizer):
    _, _, features, _ = eval_setup
    cfg = TrainerConfig(train_batch_size=8, pad_to_multiple_of=8)
    loader = make_train_loader(
        features.add_column("start_positions", [0] * len(features)).add_column(
            "end_positions", [0] * len(features)
        ),
        minilm_tokenizer,
        cfg,
        max_length=64,
        generator=torch.Generator().manual_seed(0),
    )
    widths = []
    for batch in loader:
        longest = int(batch["attention_mask"].sum(dim=1).max())
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 and longest <= width < longest + 8
        widths.append(width)
    assert min(widths) < 64  # real tokens, not max_length

    loader = make_eval_loader(
        features, minilm_tokenizer, batch_size=8, max_length=64, pad_to_max_length=True
    )
    assert {batch["input_ids"].shape[1] for batch in loader} == {64}


def test_fixed_and_dynamic_padding_give_the_same_predictions(eval_setup, minilm_tokenizer):
    from accelerate import Accelerator

    from qaexp.batching import window_lengths
    from qaexp.evaluation import collect_logits
    from qaexp.postprocess import postprocess_predictions

    cfg, examples, features, model = eval_setup
    accelerator = Accelerator(cpu=True)
    logits, predictions = {}, {}
    for name, padding in {
        "fixed": {"batch_size": 16, "pad_to_max_length": True},
        "dynamic": {"batch_size": 7, "pad_to_multiple_of": 8},
    }.items():
        loader = make_eval_loader(features, minilm_tokenizer, max_length=64, **padding)
        start, end = collect_logits(model, loader, len(features), 64, accelerator)
        logits[name] = start, end
        predictions[name] = postprocess_predictions(
            examples, features, start, end, cfg.n_best, cfg.max_answer_length
        )
    real = np.arange(64)[None, :] < window_lengths(features)[:, None]
    assert real.mean() < 0.9  # the fixed batches did carry padding
    for fixed, dynamic in zip(logits["fixed"], logits["dynamic"], strict=True):
        np.testing.assert_allclose(fixed[real], dynamic[real], rtol=1e-4, atol=1e-4)
    assert len(set(predictions["fixed"].values())) > 5  # a random model, not a constant one
    assert predictions["fixed"] == predictions["dynamic"]
