# tcseg: `make demo` (the main job on the embedded synthetic data) and `make test`.
# Each target creates .venv and installs the requirements when they are missing or changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo zoo kd keyframe fcl labelspace docs lint clean-demo

$(STAMP): requirements.txt requirements-dev.txt requirements-extra.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

# CPU-only, no network, fast; `slow` and `gpu` tests are skipped (run them with: $(PY) -m pytest -m slow).
test: setup
	$(PY) -m pytest -q

# The slow end-to-end tests (torchrun DDP, kill-and-resume); CI runs them after `make test`.
test-slow: setup
	$(PY) -m pytest -q -m slow

# Generate the synthetic aerial video set, train the image model on it, evaluate it, print the results table.
demo: setup
	$(PY) -m training.demo

# Train base_synthetic and every config/video/*_synthetic.yaml from it, evaluate and benchmark each, and write the
# leaderboard (checkpoints/leaderboard/); resumable. ZOO_ARGS passes options, e.g. ZOO_ARGS=--quick.
zoo: setup
	$(PY) -m training.zoo $(ZOO_ARGS)

# Distillation on the synthetic set: the image model, the teacher (teacher_synthetic), its logits dump, the KD image
# baseline (kd_base_synthetic), SSP and KD-SSP (kd_ssp_synthetic), each evaluated and benchmarked, in the
# zoo's leaderboard (checkpoints/leaderboard/; runs that make zoo trained already are reused).
kd: setup
	$(PY) -m training.zoo --only kd_base_synthetic --only ssp_synthetic --only kd_ssp_synthetic $(ZOO_ARGS)

# Keyframes + flow propagation on the synthetic set: the image model, SwiftNet-R18 (swiftnet_synthetic, the frozen
# keyframe model the config names) and keyframe_synthetic, side by side in the zoo's leaderboard.
keyframe: setup
	$(PY) -m training.zoo --only keyframe_synthetic $(ZOO_ARGS)

# Semi-supervised training from unlabelled video on the synthetic set: the flow cache; FCN-8s at 10 % of the labels
# with and without the flow-consistency loss, and the control (the same unlabelled steps at loss weight 0), over 3
# split seeds (mean and spread in checkpoints/sweeps/fcl/sweep.md); both recipes in the zoo's leaderboard.
fcl: setup
	$(PY) -m data.flow_cache fcn8s+fcl_synthetic
	$(PY) -m training.sweep fcn8s_synthetic fcn8s+fcl_synthetic --seeds 0,1,2 --out checkpoints/sweeps/fcl \
		--arm zero_step fcn8s+fcl_synthetic semi_cfg.fcl.weight=0 semi_cfg.zero_weight_unsup_step=true
	$(PY) -m training.zoo --only fcn8s_synthetic --only fcn8s+fcl_synthetic $(ZOO_ARGS)

# Knowledge distillation across label spaces on the synthetic set: the teacher (teacher_synthetic) pseudo-labels the
# coarse-taxonomy stand-in (config/pseudo/synthetic_coarse.yaml) with and without the ontology priors, each scored
# against the stand-in's hidden fine labels (<teacher run>/pseudo_labels/*/pseudo_labels.json), and a student
# trains on the source plus each; teacher and students side by side in the zoo's leaderboard.
labelspace: setup
	$(PY) -m training.zoo --only student_labelspace_synthetic --only student_noprior_synthetic $(ZOO_ARGS)

docs: setup
	$(PY) -m config.docs --write

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
