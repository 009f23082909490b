# Two entry points, each working on a fresh machine (Python >= 3.11 with venv):
#   make demo   set up .venv, generate the synthetic sample, enhance it (h5ad + side-by-side PNG)
#   make test   set up .venv and run the whole test suite
# GPU users: make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench accuracy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python sample_data/generate.py
	mkdir -p out
	$(BIN)/stentrans enhance sample_data/synthetic_visium.h5ad -o out/synthetic_visium_x2.h5ad \
		--plot out/synthetic_visium_x2.png --save-model out/synthetic_visium_model.safetensors --overwrite

# napari tests need a display: use Xvfb when there is none (CI installs it, see .ci/run)
test: setup
	@if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
		xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest; \
	else \
		$(BIN)/python -m pytest; \
	fi

bench: setup
	$(BIN)/python benchmarks/bench_geometry.py

# the README's accuracy table: estimators that train nothing on seeds 0-2, every method on seed 0
# (runs whose scores are stored in docs/accuracy/scores are kept; delete them and their
# docs/accuracy/runs files to measure again). Hours on 2 cores.
accuracy: setup
	$(BIN)/python benchmarks/bench_accuracy.py --datasets all --protocols heldout,lost --seeds 0,1,2 \
		--methods stentrans,lowrank,nearest,linear,cubic,lowrank_linear,lowrank_kernel
	$(BIN)/python benchmarks/bench_accuracy.py --datasets all --protocols heldout,lost --seeds 0 \
		--readme README.md

clean:
	rm -rf $(VENV) out sample_data/*.h5ad
