# facekit developer tasks. Everything installs into a local virtualenv ($(VENV)); Python >= 3.10 and pip suffice.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facekit-installed
# PyTorch for the torch backends (FAN landmarks): 2.13.0 is the CPU build kept on this workplace's
# disk (pip takes it from there); any torch >= 2.0 works.
TORCH ?= torch==2.13.0

.PHONY: install demo test docs bench bench-gpu clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,docs,fan,ray,whisper,whisper-test,embed]'
	# openai-whisper without its dependencies: it requires triton (hundreds of MB, used only by its
	# GPU word-timestamp kernels); the encoder, log-Mel and decoder need only the [whisper] extra
	$(PY) -m pip install -q --no-deps 'openai-whisper>=20240930'
	# face-alignment without its dependencies: it requires opencv-python, which would replace the
	# headless OpenCV (and needs libGL); everything else it needs is installed above
	$(PY) -m pip install -q --no-deps 'face-alignment>=1.4'
	# pyfacer, the reference for the FaRL parser parity test (tests/test_parse.py imports only its
	# face_parsing modules): without its dependencies (torchvision, timm, matplotlib, opencv-python...,
	# none of them used by those modules); validators is the one they import that is missing
	$(PY) -m pip install -q --no-deps 'pyfacer==0.0.5' 'validators>=0.20'
	# reference implementations for the embedding parity tests (tests/test_embed.py), without their
	# dependencies for the same reason (opencv-python); what they import is installed above
	$(PY) -m pip install -q --no-deps 'insightface>=0.7' 'emotiefflib>=1.1'
	touch $(STAMP)

install: $(STAMP)

## make demo: makes a short talking-face clip, runs `facekit extract` on it, prints `facekit info`
demo: $(STAMP)
	$(PY) -m facekit.demo demo-out

## make test: installs what the tests need and runs them (real-data tests skip without ../shared/data)
test: $(STAMP)
	$(PY) -m pytest -q

## make docs: builds the documentation site into site/
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

## make bench: speed (docs/performance.md) and accuracy (docs/accuracy.md) on ../shared/data
## (FACEKIT_TEST_DATA elsewhere); about 15 min on 2 cores. make bench-gpu: the GPU figures.
DATA ?= $(or $(FACEKIT_TEST_DATA),../shared/data)
bench: $(STAMP)
	$(PY) bench/throughput.py $(DATA)/videos/hamilton_multiface.mp4 \
	    $(DATA)/videos/grid/bbaf2n.mpg $(DATA)/videos/videoretalking/face_2.mp4 --every 5
	$(PY) bench/cpu_side.py
	$(PY) bench/accuracy.py

bench-gpu: $(STAMP)
	$(PY) bench/gpu_detect.py
	FACEKIT_TEST_DATA=$(DATA) $(PY) bench/gpu_throughput.py
	$(PY) bench/gpu.py --landmarker dlib68 --skip fan --worker-clips 16 --per-device 1,4,8 --clip-seconds 20
	$(PY) bench/gpu.py

clean:
	rm -rf site demo-out build *.egg-info
