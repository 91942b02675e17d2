# The two set-up commands of the README. Both create .venv and install what they need on a fresh machine.
.PHONY: quickstart test docs

# Train the built-in tiny model on built-in arithmetic (CPU, offline) and print the before/after table.
quickstart:
	scripts/install.sh
	.venv/bin/fai-rl-train --recipe recipes/quickstart/sft.yaml

# The CPU test suite (what CI runs).
test:
	scripts/install.sh dev
	.venv/bin/python -m pytest -q

# Regenerate the schema reference from the schema (a test fails when it drifts).
docs:
	.venv/bin/python -m fai_rl.config.docs > docs/recipe-reference.md
