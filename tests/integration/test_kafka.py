"""The embedded broker and the import path, on a real Kafka."""
import json
import re

import pytest

from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab.core.config import Settings
from lklab.core.processes import free_port
from lklab.core.events import parse_event
from lklab.log.generator import GeneratorConfig, bad_lines, generate, wire_json
from lklab.log.produce import ProducerSession, produce_events, produce_file, read_dead_letters

pytestmark = pytest.mark.integration


def test_round_trip_keeps_every_event_keyed_by_ride(isolated: Settings) -> None:
    workload = generate(GeneratorConfig(seed=11, duration_s=60, rides_per_minute=30))
    report = produce_events(isolated, workload.deliveries)
    assert (report.accepted, report.dead_lettered) == (len(workload.deliveries), 0)
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    records = kafka_io.run(kafka_io.read_range(isolated, {}, end))
    assert sum(end.values()) == len(records) == len(workload.deliveries)
    got = sorted(parse_event(r.value).to_json() for r in records)
    assert got == sorted(e.to_json() for e in workload.deliveries)
    for r in records:  # key = ride_id, so one ride stays in one partition, in order
        assert r.key.decode() == json.loads(r.value)["ride_id"]
    by_ride = {}
    for r in records:
        by_ride.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_ride.values())


def test_a_producer_session_sends_batch_after_batch_through_one_producer(isolated: Settings) -> None:
    """The drills' paced stream: one session, many acknowledged batches, each report its own,
    the log holding exactly what was sent, in order per ride."""
    workload = generate(GeneratorConfig(seed=12, duration_s=60, rides_per_minute=30))
    batches = [workload.deliveries[i:i + 37] for i in range(0, len(workload.deliveries), 37)]
    with ProducerSession(isolated) as session:
        reports = [session.send(batch) for batch in batches]
    assert [(r.accepted, r.dead_lettered) for r in reports] == [(len(b), 0) for b in batches]
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    records = kafka_io.run(kafka_io.read_range(isolated, {}, end))
    assert sorted(parse_event(r.value).to_json() for r in records) == sorted(e.to_json() for e in workload.deliveries)
    sent: dict[str, list[str]] = {}
    for event in workload.deliveries:
        sent.setdefault(event.ride_id, []).append(event.to_json())
    logged: dict[str, list[str]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        logged.setdefault(r.key.decode(), []).append(parse_event(r.value).to_json())
    assert logged == sent  # each ride's events in the order they were sent


def test_bad_lines_go_to_the_dead_letter_topic_and_good_lines_around_them_land(isolated: Settings, tmp_path) -> None:
    good = [e.to_json() for e in generate(GeneratorConfig(seed=3, duration_s=60, rides_per_minute=5)).deliveries[:6]]
    catalogue = dict((why, line) for line, why in bad_lines())
    bad = [catalogue[w] for w in ("malformed JSON (truncated line)", "missing field: city", "wrong type: amount_cents is a string", "unknown event_type")]
    lines = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4], good[5]]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    report = produce_file(isolated, path)

    assert (report.accepted, report.dead_lettered) == (6, 4)
    letters = sorted(read_dead_letters(isolated), key=lambda d: int(d["source"].rsplit(":", 1)[1]))
    assert [d["raw"] for d in letters] == bad
    assert [d["source"] for d in letters] == [f"{path}:{n}" for n in (2, 4, 6, 8)]
    reasons = [d["reason"] for d in letters]
    assert reasons[0].startswith("malformed JSON")
    assert "is missing" in reasons[1]
    assert "is not of type" in reasons[2]
    assert "event_type" in reasons[3] and "is not one of" in reasons[3]
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    landed = sorted(parse_event(r.value).to_json() for r in kafka_io.run(kafka_io.read_range(isolated, {}, end)))
    assert landed == sorted(good)


def test_plaintext_pii_is_encrypted_before_it_reaches_the_log(isolated: Settings, tmp_path) -> None:
    event = json.loads(generate(GeneratorConfig(seed=5, duration_s=60, rides_per_minute=5)).deliveries[0].to_json())
    event["pii"] = {"name": "Ada Lovelace", "phone": "+44 20 7946 0000"}
    path = tmp_path / "pii.jsonl"
    path.write_text(json.dumps(event) + "\n")
    assert produce_file(isolated, path).accepted == 1
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    [record] = kafka_io.run(kafka_io.read_range(isolated, {}, end))
    assert b"Ada" not in record.value and b"7946" not in record.value
    from lklab.privacy import keys

    assert keys.cipher(isolated).open(event["user_id"], json.loads(record.value)["pii"])["name"] == "Ada Lovelace"


def test_starting_twice_is_refused_and_a_busy_port_is_named(kafka: Settings, tmp_path) -> None:
    with pytest.raises(kafka_runtime.KafkaRuntimeError, match="already running"):
        kafka_runtime.start(kafka)
    other_home = kafka.model_copy(update={"home": tmp_path / "other"})
    with pytest.raises(kafka_runtime.KafkaRuntimeError, match=f"port 127.0.0.1:{kafka.kafka_port} is already in use"):
        kafka_runtime.start(other_home)
    status = kafka_runtime.status(kafka)
    assert status.running and status.reachable and status.pid


def test_java_options_the_jvm_refuses_are_one_line_naming_the_setting(kafka: Settings, tmp_path) -> None:
    bad = kafka.model_copy(update={"home": tmp_path / "bad", "kafka_port": free_port(), "kafka_controller_port": free_port(),
                                   "kafka_java_options": "-XX:+NoSuchOption"})
    with pytest.raises(kafka_runtime.KafkaRuntimeError) as refused:
        kafka_runtime.start(bad)
    message = str(refused.value)
    assert "\n" not in message and "Unrecognized VM option 'NoSuchOption'" in message, message
    assert "LKLAB_KAFKA_JAVA_OPTIONS is '-XX:+NoSuchOption'" in message, message


def test_missing_file_gives_a_clear_error(isolated: Settings, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        produce_file(isolated, tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file .it is a directory"):
        produce_file(isolated, tmp_path)


def _events(seed: int, n: int) -> list[dict]:
    return [json.loads(e.to_json()) for e in generate(GeneratorConfig(seed=seed, duration_s=60, rides_per_minute=5)).deliveries[:n]]


def test_oversized_lines_are_dead_lettered_with_their_size_and_the_import_goes_on(isolated: Settings, tmp_path) -> None:
    good, huge_bad, huge_valid = _events(21, 4), _events(22, 1)[0], _events(23, 1)[0]
    huge_bad["city"] = "Z" * 5 * 1024 * 1024  # breaks the schema: the dead letter would be 5 MB
    huge_valid["pii"] = {"name": "N" * 2 * 1024 * 1024, "phone": "+1"}  # valid, but 2.7 MB once sealed
    lines = [json.dumps(good[0]), json.dumps(huge_bad), json.dumps(good[1]), json.dumps(huge_valid),
             json.dumps(good[2]), json.dumps(good[3])]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")

    report = produce_file(isolated, path)

    assert (report.accepted, report.dead_lettered) == (4, 2)
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    landed = sorted(parse_event(r.value).event_id for r in kafka_io.run(kafka_io.read_range(isolated, {}, end)))
    assert landed == sorted(e["event_id"] for e in good)
    bad_letter, valid_letter = sorted(read_dead_letters(isolated), key=lambda d: d["source"])
    assert bad_letter["source"] == f"{path}:2" and "city" in bad_letter["reason"] and len(bad_letter["reason"]) < 400
    assert bad_letter["raw_bytes"] == len(lines[1]) and bad_letter["raw_kept_bytes"] == kafka_io.DLQ_PREVIEW_BYTES
    assert bad_letter["raw"] == lines[1][:kafka_io.DLQ_PREVIEW_BYTES]
    assert valid_letter["source"] == f"{path}:4"
    assert re.fullmatch(rf"record is [\d,]+ bytes; topic {re.escape(isolated.topic)} accepts at most 1,048,576",
                        valid_letter["reason"]), valid_letter["reason"]
    # its PII is sealed before it is dead-lettered: the letter keeps the token, never the plaintext name
    assert valid_letter["raw_bytes"] > len(lines[3]) and valid_letter["raw"].startswith('{"amount_cents"')
    assert "N" * 64 not in valid_letter["raw"]


def _topic_with_max_message_bytes(settings: Settings, topic: str, limit: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(limit)})])
        finally:
            await admin.close()

    kafka_io.run(create())


def test_a_record_over_the_topics_own_limit_is_dead_lettered(isolated: Settings) -> None:
    _topic_with_max_message_bytes(isolated, isolated.topic + ".tiny", 200)  # no event fits in 200 bytes
    tiny = isolated.model_copy(update={"topic": isolated.topic + ".tiny"})
    events = generate(GeneratorConfig(seed=12, duration_s=60, rides_per_minute=5)).deliveries[:3]
    report = produce_events(tiny, events)
    assert (report.accepted, report.dead_lettered) == (0, 3)
    letters = sorted(read_dead_letters(tiny), key=lambda d: d["source"])
    assert [d["source"] for d in letters] == ["generator:1", "generator:2", "generator:3"]
    assert all(re.fullmatch(r"record is \d+ bytes; topic \S+\.tiny accepts at most 200", d["reason"]) for d in letters)
    assert [d["raw"] for d in letters] == [wire_json(e) for e in events]  # the line as sent, small enough to keep whole


def test_a_line_that_cannot_even_be_dead_lettered_stops_the_import_with_its_line(isolated: Settings) -> None:
    from lklab.log.produce import ProduceError

    _topic_with_max_message_bytes(isolated, isolated.dlq_topic + ".tiny", 150)  # not even a reason fits
    tiny = isolated.model_copy(update={"dlq_topic": isolated.dlq_topic + ".tiny"})
    with pytest.raises(ProduceError, match=r"^generator:1: malformed JSON.*does not fit in .* nothing is dropped"):
        produce_events_raw(tiny, ["{not json", "{}"])


def produce_events_raw(settings: Settings, lines: list[str]):
    from lklab.log.produce import produce_lines

    return kafka_io.run(produce_lines(settings, lines, "generator"))
