"""Columns in every position encoding a client may negotiate."""

from __future__ import annotations

import pytest

from lsp_server.positions import Pos, offset_at, position_at

TEXT = 'x = 1\ns = "é😀" + n\n'
OFFSET = TEXT.index("n\n")  # the 'n' on line 1


@pytest.mark.parametrize("encoding, column", [("utf-16", 12), ("utf-8", 15), ("utf-32", 11)])
def test_round_trip_in_each_encoding(encoding: str, column: int) -> None:
    assert position_at(TEXT, OFFSET, encoding=encoding) == Pos(1, column)
    assert offset_at(TEXT, Pos(1, column), encoding=encoding) == OFFSET
