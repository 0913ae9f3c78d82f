# Every target creates .venv if missing and installs avmatch into it.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    ?= demo-out

.PHONY: demo test test-slow bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the release this project is tested with (a local file on the dev/CI machines)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/avdata synth $(DEMO)/corpus --videos --seed 0
	$(BIN)/avdata build-shards --audio $(DEMO)/corpus/wav --faces $(DEMO)/corpus/faces --videos $(DEMO)/corpus/mp4 \
	    --meta $(DEMO)/corpus/vox1_meta.csv --protocol matching --out $(DEMO)/shards-matching -j 2
	$(BIN)/avdata build-shards --audio $(DEMO)/corpus/wav --faces $(DEMO)/corpus/faces --videos $(DEMO)/corpus/mp4 \
	    --meta $(DEMO)/corpus/vox1_meta.csv --protocol pins --pins-splits $(DEMO)/corpus/identity_splits.txt \
	    --out $(DEMO)/shards-pins -j 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/faces.py
	$(BIN)/python bench/build_shards.py

clean:
	rm -rf $(DEMO)
