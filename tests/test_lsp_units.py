"""Settings parsing and UTF-16 positions: the server's small pure parts."""

from __future__ import annotations

from hypothesis import given, strategies as st

from lsp_server.options import Settings, parse_settings
from lsp_server.positions import Pos, line_starts, offset_at, position_at, utf16_len


def test_settings_from_camel_case() -> None:
    parsed = parse_settings({"modelPath": "/m", "device": "cpu", "steps": 4, "maxTokens": 64, "debounceMs": 10,
                             "languages": ["python", "Go"], "enabled": False, "logFile": "/tmp/x.log",
                             "somebodyElse": 1})
    assert parsed.problems == []
    s = parsed.settings
    assert (s.model_path, s.device, s.steps, s.max_tokens, s.debounce_ms) == ("/m", "cpu", 4, 64, 10)
    assert s.languages == ("python", "go") and s.enabled is False and s.log_file == "/tmp/x.log"


def test_settings_nested_under_codefill_section() -> None:
    assert parse_settings({"codefill": {"debounceMs": 5}}).settings.debounce_ms == 5


def test_bad_values_keep_the_default_and_say_why() -> None:
    parsed = parse_settings({"debounceMs": "fast", "steps": -1, "device": "tpu", "languages": ["cobol"],
                             "enabled": "yes", "maxTokens": True})
    assert parsed.settings == Settings()
    assert len(parsed.problems) == 6
    assert parse_settings({"device": "cuda:x"}).problems and not parse_settings({"device": "cuda:1"}).problems
    assert any("debounceMs='fast'" in p and "75" in p for p in parsed.problems)
    assert any("cobol" in p for p in parsed.problems)


def test_bad_values_keep_the_previous_value() -> None:
    base = Settings(debounce_ms=200)
    assert parse_settings({"debounceMs": None}, base).settings.debounce_ms == 200
    assert parse_settings("nonsense", base).problems
    listed = parse_settings({"codefill": [1, 2]}, base)  # a section that is not an object is reported, not skipped
    assert listed.settings == base and "got list" in listed.problems[0]
    assert parse_settings({"codefill": None}, base) == parse_settings(None, base)  # no section: the defaults


def test_serves_languages() -> None:
    assert Settings().serves("python") and Settings().serves("lua")
    assert not Settings(languages=("go",)).serves("python")
    assert not Settings(enabled=False).serves("python")


def test_utf16_positions_on_non_ascii_lines() -> None:
    text = 'x = "é😋" + y\nz\r\nw'
    starts = line_starts(text)
    # 😋 is two UTF-16 code units: the closing quote is at character 8 (UTF-16), index 7 (code points).
    assert offset_at(text, Pos(0, 8), starts) == 7 and text[7] == '"'
    assert position_at(text, 7, starts) == Pos(0, 8)
    assert offset_at(text, Pos(1, 1), starts) == text.index("z") + 1
    assert offset_at(text, Pos(1, 99), starts) == text.index("\r")  # past the end of a line: its end
    assert offset_at(text, Pos(2, 0), starts) == text.index("w")
    assert offset_at(text, Pos(99, 0), starts) == len(text)
    assert offset_at(text, Pos(-1, -1), starts) == 0


@given(st.lists(st.sampled_from(["a", "é", "😋", "\n", "\r\n", " ", "中"]), max_size=30).map("".join))
def test_positions_round_trip(text: str) -> None:
    starts = line_starts(text)
    for offset in range(len(text) + 1):
        if offset and text[offset - 1] == "\r" and offset < len(text) and text[offset] == "\n":
            continue  # inside a \r\n line break: not a position
        pos = position_at(text, offset, starts)
        assert offset_at(text, pos, starts) == offset
        assert pos.character == utf16_len(text[starts[pos.line] : offset])
