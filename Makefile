# Two commands do all the set-up: `make demo` (the main job on the built-in sample data) and `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: venv demo test bench clean mutation

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,beam]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medclm demo --workdir $${WORKDIR:-runs/demo}

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n 2 --dist loadfile tests; \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/data_gen.py

# Mutation testing (slow, not part of `make test`): mutmut over the modules in pyproject's [tool.mutmut], each
# mutant against that module's tests; the copy lives in mutants/ (git-ignored). Survivors and the equivalent ones:
# benchmarks/results/mutation.md. MUTANTS='data_gen.link*' limits a run to one module's mutants.
mutation: $(STAMP)
	$(PY) -m pip install -q -e '.[mutation]'
	$(VENV)/bin/mutmut run --max-children $${JOBS:-2} $(MUTANTS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info
