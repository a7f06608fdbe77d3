"""`lklab kafka`, `lklab produce`, `lklab generate`: the event log and what goes into it."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lklab.cli.common import app, console, err, fail, kafka_app, kafka_failure, serving_engine, settings




@kafka_app.command("start")
def kafka_start() -> None:
    """Start the broker in the background (data under .lklab/kafka)."""
    from lklab.log import kafka_io
    from lklab.log import broker as kafka_runtime

    s = settings()
    try:
        pid = kafka_runtime.start(s)
        kafka_io.run(kafka_io.ensure_topics(s))
    except (kafka_runtime.KafkaRuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    console.print(f"Kafka running: pid {pid}, bootstrap {s.bootstrap}, topics {s.topic} and {s.dlq_topic} ({s.partitions} partitions)")


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the broker."""
    from lklab.log import broker as kafka_runtime

    stopped = kafka_runtime.stop(settings())
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Is the broker up and reachable; topics with their end offsets."""
    from lklab.log import kafka_io
    from lklab.log import broker as kafka_runtime

    s = settings()
    st = kafka_runtime.status(s)
    health = "healthy" if st.running and st.reachable else ("running, not reachable" if st.running else "stopped")
    console.print(f"Kafka {health}: pid {st.pid or '-'}, bootstrap {st.bootstrap}, data {st.data_dir}")
    if st.reachable:
        for topic in (s.topic, s.dlq_topic):
            try:
                ends = kafka_io.run(kafka_io.end_offsets(s, topic))
                console.print(f"  {topic}: {sum(ends.values())} records, end offsets {ends}")
            except LookupError:
                console.print(f"  {topic}: not created yet")
    if not (st.running and st.reachable):
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
        err.print(f"dead-lettered {reason}", highlight=False)
    if report.dead_lettered > len(report.reasons):
        err.print(f"... and {report.dead_lettered - len(report.reasons)} more (read them from {s.dlq_topic})")
    console.print(f"accepted {report.accepted}, dead-lettered {report.dead_lettered} (to {s.dlq_topic})"
                  f"{'; the import stopped' if stopped else ''}")
    if stopped:
        raise fail(str(stopped))


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    minutes: Annotated[int, typer.Option(min=1, help="minutes of event time")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
    rides_per_minute: Annotated[int, typer.Option(min=0)] = 60,
) -> None:
    """Write a deterministic workload (late, duplicate, corrected events) and its payments ledger."""
    from lklab.log.generator import GeneratorConfig, write_jsonl, write_ledger
    from lklab.log.generator import generate as make_workload

    s = settings()
    workload = make_workload(GeneratorConfig(seed=seed, duration_s=minutes * 60, rides_per_minute=rides_per_minute))
    write_jsonl(workload.deliveries, out, workload.config.local_offsets)
    ledger = write_ledger(serving_engine(s), workload.truth)
    console.print(f"wrote {len(workload.deliveries)} deliveries of {len(workload.truth)} events to {out}; "
                  f"{ledger} payments in the ledger ({s.serving})")
