"""A word-level tokenizer for the tiny test models (no files, no hub): ids 0 <pad>, 1 <eos>, 2 <bos>, then words.

Peers that need ``model.tokenizer`` (circuit-tracer's attribution, SAEBench's dataset tokenization and BOS/pad
masking) get a real ``transformers.PreTrainedTokenizerFast`` whose vocabulary fits the tiny model's d_vocab.
"""

from __future__ import annotations

from typing import Any


def word(i: int) -> str:
    return f"w{i}"


def tiny_tokenizer(d_vocab: int = 512) -> Any:
    """PreTrainedTokenizerFast over {<pad>, <eos>, <bos>, w3 .. w(d_vocab-1)}, whitespace pre-tokenized, adding
    <bos> in front of every encoded text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({word(i): i for i in range(4, d_vocab)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )
