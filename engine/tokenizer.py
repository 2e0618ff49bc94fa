"""Encode and decode with a `tokenizers` tokenizer.json; every special token id is named here and only here."""

from __future__ import annotations

import bisect
import re
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

# The built-in model's special tokens.
END_TOKEN = "<|end|>"  # ends a fill; also pads the span and the window
MASK_TOKEN = "<|mask|>"  # a position still to be denoised
SPECIAL_TOKENS = [END_TOKEN, MASK_TOKEN]

# Special tokens of external families, by the config's family (see engine/checkpoint.py).
# LLaDA: mask <|mdm_mask|> (126336), end <|eot_id|> (126348) / <|endoftext|> (126081).
# Dream family: mask <|mask|> (151666), end <|endoftext|> (151643).
# Open-dCoder: mask <M>, end <|endoftext|>.
FAMILY_TOKENS: dict[str, dict[str, list[str]]] = {
    "codefill": {"mask": [MASK_TOKEN], "end": [END_TOKEN]},
    "llada": {"mask": ["<|mdm_mask|>"], "end": ["<|endoftext|>", "<|eot_id|>"]},
    # DiffuCoder pads the tail of a fill with <|dlm_pad|>; Dream's own vocabulary lacks it and uses <|endoftext|>.
    "Dream": {"mask": ["<|mask|>"], "end": ["<|endoftext|>", "<|im_end|>", "<|dlm_pad|>"]},
    "open-dcoder": {"mask": ["<M>"], "end": ["<|endoftext|>", "<|im_end|>"]},
}


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _encodable(text: str) -> str:
    """Text with each lone surrogate (an editor may send one; UTF-8 cannot hold it) as U+FFFD: one character for
    one, so offsets into the encoded text are offsets into text."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


class TokenizerError(ValueError):
    """The tokenizer file is missing, unreadable or lacks a required special token."""


class CodeTokenizer:
    """A byte-level BPE tokenizer plus the ids the engine needs: mask, end (and pad = end)."""

    def __init__(self, tok: Tokenizer, mask_token: str = MASK_TOKEN, end_tokens: list[str] | None = None) -> None:
        self.tok = tok
        mask_id = tok.token_to_id(mask_token)
        if mask_id is None:
            raise TokenizerError(f"tokenizer has no mask token {mask_token!r}")
        self.mask_id: int = mask_id
        ends = [tok.token_to_id(t) for t in (end_tokens or [END_TOKEN])]
        ends = [i for i in ends if i is not None]
        if not ends:
            raise TokenizerError(f"tokenizer has none of the end tokens {end_tokens or [END_TOKEN]!r}")
        self.end_id: int = ends[0]
        # Every other special token of the vocabulary (a chat turn, a FIM marker, a file separator, a bos, a reserved
        # id: an external family has dozens) is not code: it ends a fill like an end token, and never shows in text.
        self.control_ids: frozenset[int] = frozenset(
            i for i, t in tok.get_added_tokens_decoder().items() if t.special and i != mask_id and i not in ends
        )
        self.end_ids: frozenset[int] = frozenset(ends) | self.control_ids  # ids that end a fill
        self.pad_id: int = self.end_id

    @classmethod
    def from_file(cls, path: str | Path, family: str = "codefill", mask_token: str | None = None) -> "CodeTokenizer":
        """Load tokenizer.json; raise TokenizerError naming the file when it cannot be used."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({exc})") from None
        names = FAMILY_TOKENS.get(family, FAMILY_TOKENS["codefill"])
        mask = mask_token or next((t for t in names["mask"] if tok.token_to_id(t) is not None), names["mask"][0])
        try:
            return cls(tok, mask, names["end"])
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from None

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without special tokens."""
        return self.tok.encode(_encodable(text), add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Text -> ids and each id's (start, end) character offsets."""
        enc = self.tok.encode(_encodable(text), add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; special tokens are dropped."""
        return self.tok.decode([i for i in ids if i not in self.special_ids], skip_special_tokens=False)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids that never appear in decoded text."""
        return frozenset({self.mask_id, *self.end_ids})

    @cached_property
    def piece_texts(self) -> list[str]:
        """The decoded text of every id on its own (special tokens decode to '')."""
        out = []
        for i in range(self.vocab_size):
            out.append("" if i in self.special_ids else self.tok.decode([i], skip_special_tokens=False))
        return out

    @cached_property
    def newline_ids(self) -> frozenset[int]:
        """Ids whose text contains a line break."""
        return frozenset(i for i, t in enumerate(self.piece_texts) if "\n" in t or "\r" in t)

    @cached_property
    def _sorted_pieces(self) -> tuple[list[str], list[int]]:
        """The non-empty piece texts in sorted order, and their ids: a prefix's ids are one contiguous run."""
        pairs = sorted((t, i) for i, t in enumerate(self.piece_texts) if t)
        return [t for t, _ in pairs], [i for _, i in pairs]

    def ids_starting_with(self, text: str) -> frozenset[int]:
        """Ids whose own text starts with text (special tokens, whose text is empty, never)."""
        texts, ids = self._sorted_pieces
        out = []
        for j in range(bisect.bisect_left(texts, text), len(texts)):
            if not texts[j].startswith(text):
                break
            out.append(ids[j])
        return frozenset(out)
