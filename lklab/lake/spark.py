"""One Spark session factory, with Delta Lake and the Kafka source configured from local jars."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from lklab.core.config import Settings

if TYPE_CHECKING:  # pyspark is imported when a session is first needed, not by every importer
    from pyspark.sql import SparkSession


# A cluster's executors (lklab.lake.standalone): one core each, and a heap that fits a worker
# started with the default 1g next to its own daemon; one core per application so a second
# lklab process (a Kappa job next to `lklab batch`) is not left waiting for the first to finish.
EXECUTOR_MEMORY = "768m"
EXECUTOR_CORES = 1
APP_CORES_MAX = 1


def spark_jars(settings: Settings) -> list[str]:
    jars = sorted(str(p) for p in (settings.jars_dir / "spark").glob("*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise RuntimeError(f"Delta/Kafka jars missing in {settings.jars_dir / 'spark'}: run `make setup`")
    return jars


LOG4J2 = """# Written by lklab: the JVM prints errors only, so a command's output is its own lines, not Spark's WARNs.
# The root stays at warn (PySpark counts as a shell: Spark would reset any other root level to warn
# and say so on stderr); the console appender drops everything below error.
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = error
"""


def _log4j2_config(local_dir) -> str:
    config = local_dir / "log4j2.properties"
    if not config.exists() or config.read_text() != LOG4J2:
        config.write_text(LOG4J2)
    return str(config)


def get_spark(settings: Settings) -> SparkSession:
    """The process-wide session (getOrCreate): tests and Dagster runs share one JVM."""
    from pyspark.sql import SparkSession

    local_dir = settings.home / "spark"
    local_dir.mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.appName("lklab")
        .master(settings.spark_master)
        .config("spark.jars", ",".join(spark_jars(settings)))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.default.parallelism", str(settings.spark_shuffle_partitions))
        .config("spark.local.dir", str(local_dir))
        .config("spark.sql.warehouse.dir", str(local_dir / "warehouse"))
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.sql.adaptive.enabled", "true")
        # coalesce small shuffle partitions to the advisory size, not to keep every core busy: fewer tasks and files
        .config("spark.sql.adaptive.coalescePartitions.parallelismFirst", "false")
        .config("spark.sql.codegen.wholeStage", str(settings.spark_codegen).lower())
        # off: each expression is interpreted too (projections, predicates, orderings), not compiled
        .config("spark.sql.codegen.factoryMode", "FALLBACK" if settings.spark_codegen else "NO_CODEGEN")
        # Small input splits: a 128 MB split of bronze JSON, parsed and cached, overran a 1-2 GB
        # driver heap at 5M events (OutOfMemoryError in build_silver's cache).
        .config("spark.sql.files.maxPartitionBytes", str(32 * 1024 * 1024))
        .config("spark.driver.extraJavaOptions",
                f"{settings.spark_java_options} -Dderby.system.home={local_dir} -Dlog4j2.configurationFile={_log4j2_config(local_dir)}")
    )
    if not settings.spark_master.startswith("local"):
        builder = _cluster_config(builder).config("spark.executor.extraJavaOptions", settings.spark_java_options)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _cluster_config(builder: SparkSession.Builder) -> SparkSession.Builder:
    """What executors in other JVMs need. spark.jars (set above) already reaches them: the driver
    serves the jars, bound like itself to 127.0.0.1, which the executors on this machine reach.
    Python workers, if a job starts any, must be this venv's interpreter (a bare `python3` has
    no pyspark and no lklab); executors are sized to fit the standalone worker."""
    return (
        builder.config("spark.pyspark.python", sys.executable)
        .config("spark.executor.memory", EXECUTOR_MEMORY)
        .config("spark.executor.cores", str(EXECUTOR_CORES))
        .config("spark.cores.max", str(APP_CORES_MAX))
    )


def ensure_spark(settings: Settings, spark: SparkSession | None = None) -> SparkSession:
    """`spark` if the caller has one, else the process-wide session (started on first use)."""
    return spark if spark is not None else get_spark(settings)
