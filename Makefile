# Two entry points that install what they need into ./.venv on first use:
#   make demo   co-fine-tunes a shipped web-pretrained toy VLM on pick episodes (minutes)
#   make test   runs lint and the test suite (with the tpu and parity extras, so the
#               ahead-of-time TPU compile and the Hugging Face parity tests run too)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TEST_STAMP := $(VENV)/.installed-test
# A separate environment playing the robot computer in the serving tests: openpi-client pins
# numpy<2, which the main environment cannot take. If it cannot be made (no package index), the
# tests that need it are skipped and say why.
ROBOT_VENV := .venv-robot
ROBOT_STAMP := $(ROBOT_VENV)/.installed

.PHONY: demo pick place test lint install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,tpu,parity]'
	touch $(TEST_STAMP)

install: $(STAMP)

$(ROBOT_STAMP): tests/robot_client/requirements.txt
	($(PYTHON) -m venv $(ROBOT_VENV) && $(ROBOT_VENV)/bin/pip install -q -r $< && touch $@) \
		|| echo "warning: could not make $(ROBOT_VENV); the robot-client serving tests will skip"

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

test: lint $(ROBOT_STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# Co-fine-tune the shipped web-pretrained toy VLM on pick episodes (configs/demo.py; resumes if
# interrupted), export, then run the policy in closed loop on 100 seen pick episodes next to the
# scripted expert, answer 200 held-out web questions and write a GIF of the first episodes.
demo: $(STAMP)
	$(BIN)/python -m rt2_jax.train --config=configs/demo.py --workdir=runs/demo
	$(BIN)/python -m rt2_jax.tools.eval_sim --export=runs/demo/export --episodes=100 \
		--categories=seen --vqa_questions=200 --gif=runs/demo/episodes.gif --batch_size=50

# The co-fine-tuning recipes: web-only pretraining, then co-fine-tuning with a third of each
# batch web data (seed 0), closed-loop evaluation per category, and a GIF of 8 seen episodes.
# $(1): config, $(2): workdir, $(3): co-fine-tuning steps.
define cofinetune_and_gif
	$(BIN)/python -m rt2_jax.experiments.cofinetune --config=$(1) \
		--workdir=$(2) --arms=cofinetune --seeds=0 --pretrain_steps=1500 \
		--finetune_steps=$(3) --robot_fraction=0.67 --episodes=40 --vqa_questions=200
	$(BIN)/python -m rt2_jax.tools.eval_sim --export=$(2)/cofinetune_seed0/export \
		--episodes=8 --categories=seen --vqa_questions=0 --gif=$(2)/episodes.gif \
		--batch_size=8
endef

# The recipe that acts (configs/toy_pick.py), on pick episodes. About an hour on 2 cores
# (README, The co-fine-tuning experiment).
pick: $(STAMP)
	$(call cofinetune_and_gif,configs/toy_pick.py,runs/pick,3000)

# Pick and place on a named card (configs/toy_place_high_release.py), 6,000 co-fine-tuning
# steps; the evaluation adds the symbols category (card symbols only the web data shows).
# About an hour and a half on 2 cores (README, Status of the toy-world policy).
place: $(STAMP)
	$(call cofinetune_and_gif,configs/toy_place_high_release.py,runs/place,6000)

clean:
	rm -rf $(VENV) $(ROBOT_VENV) runs *.egg-info
