"""The dead-letter record of a line: whole when it fits, else its first bytes, cut between characters."""
import json

import pytest

from lklab.log.kafka_io import DLQ_PREVIEW_BYTES, dlq_payload


def test_a_line_that_fits_is_kept_whole() -> None:
    letter = json.loads(dlq_payload("malformed JSON", "f.jsonl:3", "{not json", max_bytes=1000))
    assert letter == {"reason": "malformed JSON", "source": "f.jsonl:3", "raw": "{not json"}


def test_a_line_too_large_keeps_its_first_bytes_and_says_how_many() -> None:
    line = "€" * 400_000  # 1.2 MB of three-byte characters: 64 KiB ends inside one
    payload = dlq_payload("record is too large", "f.jsonl:2", line, max_bytes=1_048_000)
    letter = json.loads(payload)
    assert len(payload) <= 1_048_000
    assert letter["raw_bytes"] == 1_200_000 and letter["raw_kept_bytes"] == DLQ_PREVIEW_BYTES - 1
    assert letter["raw"] == line[:DLQ_PREVIEW_BYTES // 3]

    tight = dlq_payload("record is too large", "f.jsonl:2", line, max_bytes=50_000)  # "\u20ac" is 6 bytes in JSON
    kept = json.loads(tight)["raw_kept_bytes"]
    assert len(tight) <= 50_000 and 0 < kept < 50_000 // 2 and json.loads(tight)["raw"] == line[:kept // 3]


def test_a_limit_too_small_for_any_dead_letter_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit in 40 bytes even without its line"):
        dlq_payload("malformed JSON", "f.jsonl:1", "x" * 100, max_bytes=40)


def test_bytes_that_are_not_utf8_are_kept_exactly_in_base64() -> None:
    import base64

    raw = b'{"city": "b\xffx"}'
    letter = json.loads(dlq_payload("malformed JSON", "t[0]@1", raw, max_bytes=1000, consumer="lklab-speed"))
    assert base64.b64decode(letter["raw_base64"]) == raw and letter["raw"] == '{"city": "b\ufffdx"}'
    assert letter["consumer"] == "lklab-speed"
    cut = json.loads(dlq_payload("too large", "t[0]@2", b"\xff" * 200_000, max_bytes=100_000))
    assert base64.b64decode(cut["raw_base64"]) == b"\xff" * cut["raw_kept_bytes"] and cut["raw_bytes"] == 200_000
