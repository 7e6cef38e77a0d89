# Two entry points: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A GPU machine can set EXTRA=cuda; CPU is the default.
EXTRA ?= cpu
# The demo needs the package and TensorFlow only; the tests add their tools and ONNX.
DEMO_STAMP := $(VENV)/.installed-$(EXTRA)
STAMP := $(VENV)/.installed-$(EXTRA)-dev

# The annotation page's test drives a real Chromium (Debian's package; Playwright
# cannot download its own browser everywhere). Installed once with apt-get, as
# root or through sudo; without it `make test` stops here and says why.
CHROMIUM_STAMP := $(VENV)/.chromium

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRA)]"
	touch $(DEMO_STAMP)

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRA),dev,onnx]"
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

$(CHROMIUM_STAMP): | $(PY)
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "make: installing Chromium for tests/test_annotate_browser.py (apt-get install chromium)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } >/dev/null \
	  && command -v chromium >/dev/null 2>&1 \
	  || { echo "make: cannot install Chromium; the browser test needs a 'chromium' on PATH:" \
	       "install it (Debian/Ubuntu: apt-get install chromium) and run make test again" >&2; exit 1; }; \
	fi
	touch $(CHROMIUM_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/cm-unet demo --out demo_out

# Two worker processes: most of a test's time is TensorFlow tracing its
# graphs, one Python thread, so a 2-core CPU runs two tests at once. Whole
# files go to one worker (loadfile): a module's shared fixtures (one quick
# study, one search) are then built once.
test: $(STAMP) $(CHROMIUM_STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider --timeout=600 --durations=20 -n 2 --dist loadfile

clean:
	rm -rf $(VENV) demo_out
