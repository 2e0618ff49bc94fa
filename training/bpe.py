"""Train the byte-level BPE tokenizer for code.

The pre-tokenizer keeps every line break a token of its own and the indentation at a line start a piece of its
own, so a hole that starts at a line start or after the indentation splits text exactly as training did.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.tokenizer import SPECIAL_TOKENS

# Alternatives, in order: a line break; a line's indentation; a word with at most one space before it;
# up to three digits; a run of punctuation with at most one space before it; spaces before more spaces;
# any other horizontal whitespace.
CODE_SPLIT = (
    r"\r\n|\r|\n"
    r"|^[ \t]+"
    r"|[ ]?[\p{L}_][\p{L}\p{N}_]*"
    r"|[ ]?\p{N}{1,3}"
    r"|[ ]?[^\s\p{L}\p{N}_]+"
    r"|[ \t]+(?=[ \t])"
    r"|[ \t]+"
)


def new_tokenizer() -> Tokenizer:
    """An untrained tokenizer with the code pre-tokenizer and byte-level decoding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CODE_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, out: Path) -> Tokenizer:
    """Train on texts and save tokenizer.json to out."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(out))
    return tok
