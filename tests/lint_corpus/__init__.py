"""Differential lint corpus: mutated tiny configs and what upstream's real train.py did with each
(see make_corpus.py and docs/lint.md, "Lint agrees with the trainer")."""
