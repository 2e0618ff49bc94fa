"""Lay out prefix + [MASK]*k + suffix in one window of at most `window` tokens, cut at line boundaries."""

from __future__ import annotations

from dataclasses import dataclass

from engine.tokenizer import CodeTokenizer

# Characters of context kept before tokenizing: far more than a window needs, so a 5 MB file costs no more
# than a small one.
CHARS_PER_TOKEN_MAX = 16


@dataclass
class Window:
    """One request's token layout and what was cut to fit it."""

    prefix_ids: list[int]
    span_len: int
    suffix_ids: list[int]
    prefix_cut_chars: int  # characters of the prefix left out (from its start)
    suffix_cut_chars: int  # characters of the suffix left out (from its end)
    healed: str = ""  # the prefix's last token(s), taken back into the span (see build_window's heal)

    def ids_with(self, mask_id: int) -> list[int]:
        """prefix + [mask] * span_len + suffix."""
        return self.prefix_ids + [mask_id] * self.span_len + self.suffix_ids

    @property
    def span_start(self) -> int:
        """Index of the span's first position."""
        return len(self.prefix_ids)

    @property
    def length(self) -> int:
        """Tokens in the window."""
        return len(self.prefix_ids) + self.span_len + len(self.suffix_ids)


def _keep_tail(ids: list[int], quota: int, newline_ids: frozenset[int]) -> int:
    """Index from which to keep ids so at most quota remain, starting at a line start where possible."""
    if len(ids) <= quota:
        return 0
    first = len(ids) - quota
    for i in range(first, len(ids)):
        if ids[i - 1] in newline_ids:
            return i
    return first  # the last line alone is longer than the quota: cut inside it


def _keep_head(ids: list[int], quota: int, newline_ids: frozenset[int]) -> int:
    """How many ids to keep from the start, at most quota, ending after a line break where possible."""
    if len(ids) <= quota:
        return len(ids)
    for j in range(quota, 0, -1):
        if ids[j - 1] in newline_ids:
            return j
    return quota


MAX_HEALED_TOKENS = 3


def _heal_count(tok: CodeTokenizer, pre_ids: list[int], pre_text: str) -> int:
    """How many of the prefix's last tokens to take back: the last one (unless it holds a line break, or the cursor is
    in a line's indentation), and the ones before it while their joined text still starts some token of the
    vocabulary (`retu` = `ret` + `u` -> `return`)."""
    def healable(text: str) -> bool:
        return bool(text) and "\n" not in text and "\r" not in text and "\ufffd" not in text
    if not pre_ids or not healable(tok.piece_texts[pre_ids[-1]]):
        return 0
    line = pre_text[pre_text.rfind("\n") + 1:]
    if not line.strip():  # the cursor sits in a line's indentation: the editor put it there, keep it as it is
        return 0
    n, text = 1, tok.piece_texts[pre_ids[-1]]
    while n < min(MAX_HEALED_TOKENS, len(pre_ids)):
        wider = tok.piece_texts[pre_ids[-n - 1]] + text
        if not healable(wider) or not tok.ids_starting_with(wider):
            break
        n, text = n + 1, wider
    return n if pre_text.endswith(text) else 0


def build_window(tok: CodeTokenizer, prefix: str, suffix: str, span_len: int, window: int = 256,
                 max_span: int = 128, heal: bool = False) -> Window:
    """Fit prefix, span and suffix into window tokens.

    The suffix gets up to a third of the context budget (more if the prefix is short) and is never dropped while
    it has text; the prefix gets the rest. Both are cut at line boundaries when a whole line fits.

    heal: a cursor rarely sits where the tokenizer would cut: after `return ` the prefix ends in a lone space
    token, while in training text that space belongs to the next word (` total`). So the prefix's last token (and
    the one or two before it while together they start a token: `ret` + `u`; see _heal_count for what is never
    taken) leaves the prefix and becomes the span's first position, which the sampler may fill only with a token
    that starts with the same text (`Window.healed`). That token is one of the span's slots.
    """
    if span_len < 1:
        raise ValueError("span_len must be at least 1")
    span_len = min(span_len, max_span, window - 2)
    budget = window - span_len
    char_cap = budget * CHARS_PER_TOKEN_MAX
    pre_text = prefix[-char_cap:]
    cut_pre = len(prefix) - len(pre_text)
    if cut_pre:  # start the kept text at a line start if one is near
        nl = pre_text.find("\n")
        if 0 <= nl < len(pre_text) // 2:
            pre_text = pre_text[nl + 1 :]
            cut_pre = len(prefix) - len(pre_text)
    suf_text = suffix[:char_cap]
    cut_suf = len(suffix) - len(suf_text)

    pre_ids, pre_off = tok.encode_with_offsets(pre_text)
    suf_ids, suf_off = tok.encode_with_offsets(suf_text)
    healed = ""
    if heal and span_len >= 2:
        n = _heal_count(tok, pre_ids, pre_text)
        if n:
            healed = pre_text[pre_off[-n][0]:]
            pre_ids, pre_off = pre_ids[:-n], pre_off[:-n]
    suf_quota = min(len(suf_ids), max(budget // 3, budget - len(pre_ids)))
    if suf_ids and suf_quota == 0:
        suf_quota = 1
    pre_quota = budget - suf_quota
    start = _keep_tail(pre_ids, pre_quota, tok.newline_ids)
    if start:
        cut_pre += pre_off[start][0]
    pre_ids = pre_ids[start:]
    # Give what the prefix left unused back to the suffix.
    suf_quota = budget - len(pre_ids)
    end = _keep_head(suf_ids, suf_quota, tok.newline_ids)
    if end < len(suf_ids):
        cut_suf += len(suf_text) - suf_off[end - 1][1] if end else len(suf_text)
    suf_ids = suf_ids[:end]
    return Window(pre_ids, span_len, suf_ids, cut_pre, cut_suf, healed)
