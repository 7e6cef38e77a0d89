# Two entry points: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A GPU machine can set EXTRA=cuda; CPU is the default.
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRA),dev,onnx]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cm-unet demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider --timeout=600

clean:
	rm -rf $(VENV) demo_out
