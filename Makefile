# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need first (scripts/setup.sh is idempotent).
.PHONY: setup demo test unit dagster-ui bench-isolation clean

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/lklab demo

test: setup
	.venv/bin/pytest -q --timeout=900

unit: setup
	.venv/bin/pytest -q tests/unit

bench-isolation: setup
	.venv/bin/python bench/replay_isolation.py

dagster-ui: setup
	DAGSTER_HOME=$(CURDIR)/.lklab/dagster .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	-.venv/bin/lklab kafka stop
	rm -rf .lklab
