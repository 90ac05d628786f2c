# plumbline: `make demo` runs the main job, `make test` runs every test. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PLUMBLINE_HOME ?= ./data
export PLUMBLINE_HOME

.PHONY: demo test ui clean

$(BIN)/plumbline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# an editable install leaves plumbline's own modules uncompiled: compile them once, so every step process need not
	$(BIN)/python -m compileall -q orchestration assets contracts
	touch $@

demo: $(BIN)/plumbline
	$(BIN)/plumbline feed --profile demo
	$(BIN)/plumbline sync --summary

test: $(BIN)/plumbline
	$(BIN)/python -m pytest -q

ui: $(BIN)/plumbline
	mkdir -p $(PLUMBLINE_HOME)/dagster
	test -f $(PLUMBLINE_HOME)/dagster/dagster.yaml || cp orchestration/dagster.yaml $(PLUMBLINE_HOME)/dagster/dagster.yaml
	DAGSTER_HOME=$(abspath $(PLUMBLINE_HOME))/dagster $(BIN)/dagster dev -m orchestration.definitions -h 127.0.0.1 -p 3000

clean:
	rm -rf $(PLUMBLINE_HOME)
