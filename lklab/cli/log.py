"""`lklab kafka`, `lklab produce`, `lklab generate`: the event log and what goes into it."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lklab.cli.common import app, console, err, fail, kafka_app, kafka_failure, serving_engine, settings




MAX_BROKERS = 9  # Settings.kafka_brokers' bound: one JVM per node


@kafka_app.command("start")
def kafka_start(
    brokers: Annotated[Optional[int], typer.Option(
        "--brokers", help="KRaft nodes (each broker+controller), 1..9; default LKLAB_KAFKA_BROKERS, else the size of the "
                          "cluster last started under this home, else 1", show_default=False)] = None,
) -> None:
    """Start the broker, or a cluster of brokers, in the background (data under .lklab/kafka)."""
    from lklab.log import kafka_io
    from lklab.log import broker as kafka_runtime

    s = settings()
    if brokers is not None:
        if not 1 <= brokers <= MAX_BROKERS:
            raise fail(f"--brokers {brokers}: must be between 1 and {MAX_BROKERS}")
        s = s.model_copy(update={"kafka_brokers": brokers})
    try:
        kafka_runtime.start(s)
        kafka_io.run(kafka_io.ensure_topics(s))
    except (kafka_runtime.KafkaRuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a Kafka refusal creating the topics (say a replication factor above the brokers)
        raise kafka_failure(s, exc) from None
    pids = ", ".join(str(n.pid) for n in kafka_runtime.status(s).nodes)
    topics = (f"topics {s.topic} and {s.dlq_topic} ({s.partitions} partitions, replication factor {s.topic_replication_factor}, "
              f"min.insync.replicas {s.topic_min_insync_replicas})")
    if s.kafka_brokers == 1:
        console.print(f"Kafka running: pid {pids}, bootstrap {s.bootstrap}, {topics}")
    else:
        console.print(f"Kafka running: {s.kafka_brokers} brokers (pids {pids}), bootstrap {s.bootstrap}, {topics}; "
                      f"recorded in {s.home / 'kafka' / 'cluster.json'}, so later commands with this home use all "
                      f"{s.kafka_brokers} without --brokers")


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the broker (every node of a cluster)."""
    from lklab.log import broker as kafka_runtime

    stopped = kafka_runtime.stop(settings())
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Is the broker (each node of a cluster) up and reachable; topics with their end offsets."""
    from lklab.log import kafka_io
    from lklab.log import broker as kafka_runtime

    s = settings()
    st = kafka_runtime.status(s)
    up = sum(n.alive and n.reachable for n in st.nodes)
    if st.healthy:
        health = "healthy"
    elif st.running and st.reachable:
        health = f"degraded ({up} of {len(st.nodes)} nodes up)"
    else:
        health = "running, not reachable" if st.running else "stopped"
    console.print(f"Kafka {health}: pid {st.pid or '-'}, bootstrap {st.bootstrap}, data {st.data_dir}")
    if len(st.nodes) > 1:
        for n in st.nodes:
            state = "up" if n.alive and n.reachable else ("running, not reachable" if n.alive else "down")
            console.print(f"  node {n.node_id}: {state}, pid {n.pid or '-'}, port {n.port}, data {n.data_dir}")
    if st.reachable:
        for topic in (s.topic, s.dlq_topic):
            try:
                ends = kafka_io.run(kafka_io.end_offsets(s, topic))
                console.print(f"  {topic}: {sum(ends.values())} records, end offsets {ends}")
            except LookupError:
                console.print(f"  {topic}: not created yet")
    if not st.healthy:
        raise typer.Exit(code=1)




@app.command()
def produce(file: Annotated[Path, typer.Option("--file", "-f", help="JSONL, one schema-v1 event per line")]) -> None:
    """Import your own events: valid lines go to the topic, bad lines to the dead-letter topic with a reason."""
    from aiokafka.errors import KafkaError

    from lklab.log.produce import ProduceError, produce_file

    s = settings()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # piped, a transient bar leaves only a blank line
        task = bar.add_task(f"producing {file}", total=None)
        try:
            report = produce_file(s, file, on_progress=lambda n: bar.update(task, description=f"producing {file}: line {n}"))
        except ProduceError as exc:
            report, stopped = exc.report, exc
        except (FileNotFoundError, LookupError, OSError) as exc:
            raise fail(str(exc)) from None
        except (KafkaError, TimeoutError) as exc:
            raise kafka_failure(s, exc) from None
        else:
            stopped = None
    for reason in report.reasons:
        err.print(f"dead-lettered {reason}", highlight=False, markup=False)  # a reason quotes the line: "[/x]" is no markup
    if report.dead_lettered > len(report.reasons):
        err.print(f"... and {report.dead_lettered - len(report.reasons)} more (read them from {s.dlq_topic})")
    console.print(f"accepted {report.accepted}, dead-lettered {report.dead_lettered} (to {s.dlq_topic})"
                  f"{'; the import stopped' if stopped else ''}")
    if report.pii_dropped:
        console.print(f"dropped the PII of {report.pii_dropped} events of forgotten users (`lklab forget`); the events were kept")
    if stopped:
        raise fail(str(stopped))


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    minutes: Annotated[int, typer.Option(min=1, help="minutes of event time")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
    rides_per_minute: Annotated[float, typer.Option(min=0, help="may be below 1 for long, sparse histories")] = 60,
    schema_v2: Annotated[float, typer.Option("--schema-v2", min=0, max=1, help="share of rides written in event schema v2 "
                                             "(tips, currency); the rest in v1")] = 0.0,
    pii: Annotated[float, typer.Option("--pii", min=0, max=1, help="share of users whose ride requests carry their name "
                                       "and phone in plaintext (`lklab produce` seals each with the user's own key)")] = 0.0,
) -> None:
    """Write a deterministic workload (late, duplicate, corrected events) and its payments ledger."""
    from lklab.log.generator import GeneratorConfig, write_jsonl, write_ledger
    from lklab.log.generator import generate as make_workload

    s = settings()
    workload = make_workload(GeneratorConfig(seed=seed, duration_s=minutes * 60, rides_per_minute=rides_per_minute,
                                             schema_v2_fraction=schema_v2, pii_fraction=pii))
    write_jsonl(workload.deliveries, out, workload.config.local_offsets, workload.riders)
    ledger = write_ledger(serving_engine(s), workload.truth)
    console.print(f"wrote {len(workload.deliveries)} deliveries of {len(workload.truth)} events to {out}; "
                  f"{ledger} payments in the ledger ({s.serving})")
