# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need first (scripts/setup.sh is idempotent).
.PHONY: setup demo test unit dagster-ui bench bench-isolation drills clean

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/lklab demo

test: setup
	.venv/bin/lint-imports
	.venv/bin/pytest -q --timeout=900 --durations=25

unit: setup
	.venv/bin/pytest -q tests/unit

# bench: every layer against its limit and its peer (about 20 min on 2 cores); it rewrites bench/RESULTS.md.
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

dagster-ui: setup
	.venv/bin/python -c 'from orchestration.launch import write_dagster_yaml; from lklab.core.config import Settings; write_dagster_yaml(Settings())'
	DAGSTER_HOME=$(CURDIR)/.lklab/dagster .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	-.venv/bin/lklab kafka stop
	rm -rf .lklab
