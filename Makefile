# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need first (scripts/setup.sh is idempotent).
# uv installs no .pyc, and where PYTHONDONTWRITEBYTECODE is set no process writes one: every
# process (each Kappa job, Faust worker, `lklab batch`, Dagster run) then compiles its imports from
# source. Measured on the partial-write drill (a dozen processes): 210 CPU-s without bytecode, 179 s
# with it. So bytecode is written as modules are first imported; compiling all of site-packages at
# install instead cost 86 s more.
unexport PYTHONDONTWRITEBYTECODE
.PHONY: setup up down demo demo-scaled test lab-check unit dagster-ui bench bench-isolation drills chaos clean

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/lklab demo

# up: the whole lab in the background with live traffic (dashboard on 127.0.0.1:8000, Dagster on :3000); down stops it
up: setup
	.venv/bin/lklab up --with-traffic

down:
	.venv/bin/lklab down

# demo-scaled: the same demo on a 3-broker Kafka cluster, Spark standalone and PostgreSQL (all on loopback)
demo-scaled: setup
	.venv/bin/lklab demo --scaled

# test: two pytest workers, whole files each (--dist loadfile), one per core: the suite is CPU-bound
# (Spark, brokers, stream processes), so more workers only contend. Each worker starts its own
# broker, Spark session and PostgreSQL on free loopback ports. --no-loadscope-reorder keeps the
# collection order (e2e first, unit tests last): xdist's default starts the files with the most tests
# first, which left the longest test (the one-test scaled demo) to the end of the run.
test: setup
	.venv/bin/lint-imports
	.venv/bin/pytest -q --timeout=900 --durations=25 -n 2 --dist loadfile --no-loadscope-reorder

# lab-check: `lklab up --with-traffic` watched in headless chromium (Playwright): about 5 min, run alone
lab-check: setup
	.venv/bin/pytest -q --timeout=900 --durations=10 -m lab tests/e2e/test_lab_up.py

unit: setup
	.venv/bin/pytest -q tests/unit

# bench: every layer against its limit and its peer (about 30 min on 2 cores); it rewrites bench/RESULTS.md.
# `make bench BENCH_ARGS=--quick` checks it end to end on small sizes and writes .lklab/bench-quick/ instead.
bench: setup
	.venv/bin/pip install -q -e ".[bench]"
	.venv/bin/python bench/suite.py $(BENCH_ARGS)

bench-isolation: setup
	.venv/bin/python bench/replay_isolation.py

# drills: every registered drill at default size (each on its own broker), then drills/REPORT.md.
# A drill that fails does not stop the others; the target fails at the end if any did.
drills: setup
	@began=$$(date +%s); status=0; .venv/bin/lklab drill run --all --size default || status=1; \
	.venv/bin/lklab drill report; \
	echo "make drills: $$(( $$(date +%s) - began ))s for every drill and the report"; \
	exit $$status

# chaos: every reliability check at full size (kills, broker loss, fuzzing, concurrent readers, the
# security surface), then RELIABILITY.md and reliability.json. A check that fails does not stop the others.
chaos: setup
	@began=$$(date +%s); status=0; .venv/bin/lklab chaos run --all --size full || status=1; \
	.venv/bin/lklab chaos report; \
	echo "make chaos: $$(( $$(date +%s) - began ))s for every check and the report"; \
	exit $$status

dagster-ui: setup
	.venv/bin/python -c 'from orchestration.launch import write_dagster_yaml; from lklab.core.config import Settings; write_dagster_yaml(Settings())'
	DAGSTER_HOME=$(CURDIR)/.lklab/dagster .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	-.venv/bin/lklab kafka stop
	rm -rf .lklab
