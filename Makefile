# The two set-up commands of the README. Both create .venv and install what they need on a fresh machine.
.PHONY: quickstart test docs

# On a CPU, offline: SFT of the built-in tiny model on built-in arithmetic, then GRPO from the built-in tiny-sft
# start on held-out single-digit problems; each run prints its before/after table (~1 + ~2 min on 2 cores).
# One torch thread: for a model this small it is faster than two.
quickstart:
	scripts/install.sh
	OMP_NUM_THREADS=1 .venv/bin/fai-rl-train --recipe recipes/quickstart/sft.yaml
	OMP_NUM_THREADS=1 .venv/bin/fai-rl-train --recipe recipes/quickstart/grpo.yaml

# The CPU test suite (what CI runs), one pytest worker per core of a 2-core machine; the long learning tests are
# spread over both (~13 min). Tests marked `tinker` run against a local Tinker-API server that lives
# in its own venv, .tinker-server/venv (~2.5 min to install the first time, a no-op afterwards).
test:
	scripts/install.sh dev
	tests/tinker_harness/install.sh
	.venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=15

# Regenerate the schema reference from the schema (a test fails when it drifts).
docs:
	.venv/bin/python -m fai_rl.config.docs > docs/recipe-reference.md
