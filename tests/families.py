"""Tiny offline checkpoints of today's encoder families, each with a tokenizer of its own kind
trained here on synthetic text: DeBERTa-v3 (SentencePiece unigram "▁", shipped as spm.model and
converted, type_vocab_size 0), XLM-R (unigram "▁", no token types), ModernBERT (byte-level
BPE, no token types) and ELECTRA (WordPiece, token types). One layer of width 32: seconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qaexp.data.synthetic import generate_examples

FAMILIES = ("deberta-v3", "xlm-roberta", "modernbert", "electra")
# Layer sizes shared by every family (and by the BERT of the same size they are measured against).
SIZE = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
VOCAB_SIZE = 600


def corpus(size: int = 300) -> list[str]:
    """Training text for the tokenizers: the synthetic generator's paragraphs and questions
    (both splits, so evaluation text is in-vocabulary too)."""
    texts = []
    for split in ("train", "validation"):
        for record in generate_examples(size, seed=0, split=split):
            texts += [record["context"], record["question"]]
    return list(dict.fromkeys(texts))


def train_spm_model(folder: Path, specials: dict[str, str], texts: list[str]) -> Path:
    """A SentencePiece unigram model (spm.model) as the Hub's DeBERTa-v3 repos ship it:
    ids 0-3 pad, cls/bos, sep/eos, unk; the mask token a user-defined piece."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    text_file = folder / "corpus.txt"
    text_file.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(folder / "spm"),
        vocab_size=VOCAB_SIZE,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece=specials["pad"],
        bos_piece=specials["cls"],
        eos_piece=specials["sep"],
        unk_piece=specials["unk"],
        user_defined_symbols=[specials["mask"]],
        minloglevel=2,
    )
    text_file.unlink()
    (folder / "spm.vocab").unlink()
    return folder / "spm.model"


def deberta_spm_folder(folder: Path, texts: list[str]) -> Path:
    """What a DeBERTa-v3 Hub repo holds for its tokenizer: spm.model, tokenizer_config.json
    and config.json, no tokenizer.json (the fast tokenizer is built by conversion)."""
    import json

    from transformers import DebertaV2Config

    specials = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}
    train_spm_model(folder, specials, texts)
    config = DebertaV2Config(vocab_size=VOCAB_SIZE, **deberta_v3_layout())
    config.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False})
    )
    return folder


def deberta_v3_layout() -> dict:
    """DeBERTa-v3's attention layout (relative positions, no absolute position embeddings,
    no token types), at the tiny size."""
    return {
        **SIZE,
        "type_vocab_size": 0,
        "relative_attention": True,
        "position_buckets": 256,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "max_relative_positions": -1,
        "norm_rel_ebd": "layer_norm",
        "max_position_embeddings": 512,
    }


def _deberta(folder: Path, texts: list[str]):
    from transformers import AutoTokenizer, DebertaV2Config

    spm_folder = deberta_spm_folder(folder.parent / f"{folder.name}-spm", texts)
    tokenizer = AutoTokenizer.from_pretrained(spm_folder)  # converted from spm.model
    return DebertaV2Config(vocab_size=len(tokenizer), **deberta_v3_layout()), tokenizer


def _unigram_vocab(texts: list[str], specials: list[str]) -> list[tuple[str, float]]:
    """A unigram ("▁" word starts) vocabulary trained with the tokenizers library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    import json

    return [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["vocab"]]


def _xlm_roberta(folder: Path, texts: list[str]):
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer

    vocab = _unigram_vocab(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = XLMRobertaTokenizer(vocab=vocab)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=514,  # 512 positions after the padding offset, as XLM-R's
        type_vocab_size=1,  # as XLM-R's: one token type, so no token_type_ids
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SIZE,
    )
    return config, tokenizer


def _modernbert(folder: Path, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import ModernBertConfig, PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    # ModernBERT's own post-processor: [CLS] A [SEP] B [SEP], byte-level offsets trimmed.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="[CLS] $A [SEP]",
                pair="[CLS] $A [SEP] $B [SEP]",
                special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=8192,
    )
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=cls,
        sep_token_id=sep,
        bos_token_id=cls,
        eos_token_id=sep,
        max_position_embeddings=8192,
        global_attn_every_n_layers=1,
        local_attention=64,
        **SIZE,
    )
    return config, tokenizer


def _electra(folder: Path, texts: list[str]):
    from tokenizers import BertWordPieceTokenizer
    from transformers import ElectraConfig, ElectraTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=VOCAB_SIZE, show_progress=False)
    tokenizer = ElectraTokenizerFast(vocab=wordpiece.get_vocab())
    config = ElectraConfig(vocab_size=len(tokenizer), embedding_size=32, **SIZE)
    return config, tokenizer


BUILDERS: dict[str, Callable] = {
    "deberta-v3": _deberta,
    "xlm-roberta": _xlm_roberta,
    "modernbert": _modernbert,
    "electra": _electra,
}


def build_family_checkpoint(family: str, folder: Path, texts: list[str] | None = None) -> Path:
    """A randomly initialised question-answering model of `family` and its tokenizer, saved
    with save_pretrained into `folder` (what `model.name_or_path=FOLDER` loads)."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    config, tokenizer = BUILDERS[family](folder, texts or corpus())
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
