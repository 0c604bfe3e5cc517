# make demo : install what is missing, build, run the end-to-end demo
# make test : the same set-up, then the test suite
# make bench: the search benchmark at 1M templates (slow; run by hand)
# make fuzz : every fuzz target for FUZZ_SECONDS (default 120) each (run by hand)
# make sanitize: the native core built with AddressSanitizer and UBSan, and the whole test suite run on it
# make wheel: a wheel that needs no system package (dist/), checked with auditwheel show
# make check-wheel: that wheel in a fresh virtual environment runs the demo
# make demo PHOTOS=../shared/faces: the demo on photos instead of synthetic faces

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SOURCES := $(wildcard cpp/*.h cpp/*.cpp) $(shell find python -name '*.py' -o -name '*.pyi') CMakeLists.txt pyproject.toml

.PHONY: demo test bench fuzz sanitize asan wheel check-wheel system-deps clean

PHOTOS ?=

demo: $(VENV)/.built
	$(VENV)/bin/fpmatch demo $(if $(PHOTOS),--photos $(PHOTOS))

test: $(VENV)/.built
	@$(PY) -m pytest tests -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: $(VENV)/.built
	$(PY) benchmarks/bench_search.py --n 1000000 --profile centred --nlist 2048 --nprobe 848,864,880,896 \
		--json reports/search_centred_1m.json
	$(PY) benchmarks/bench_search.py --n 1000000 --profile offset --prefix-bits 512 --rerank 512 \
		--nprobe 256,512,768 --json reports/search_offset_1m.json
	$(PY) benchmarks/bench_he.py --json reports/he_centred.json
	$(PY) benchmarks/bench_he.py --profile offset --json reports/he_offset.json
	$(PY) benchmarks/bench_security.py --json reports/security_centred.json
	$(PY) benchmarks/bench_eval.py --million --json reports/eval.json --png-dir reports/eval

# The fuzzer (and clang for the instrumented core) is installed only here: the tests do not need it.
fuzz: $(VENV)/.built
	PY=$(PY) bash scripts/fuzz.sh

sanitize asan: $(VENV)/.built
	PY=$(PY) bash scripts/sanitize.sh

wheel: $(VENV)/.deps
	PYTHON=$(PY) bash scripts/build-wheel.sh dist

check-wheel: wheel
	PYTHON=$(PYTHON) bash scripts/check-wheel.sh dist/fpmatch-*.whl --subjects 500 --probes 50

system-deps:
	bash scripts/system-deps.sh

$(VENV)/.deps: requirements-dev.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps .
	touch $@

clean:
	rm -rf build dist $(VENV)
