"""``python -m vitrieval`` (also what ``torchrun -m vitrieval`` runs)."""

import sys

from vitrieval.cli import main

sys.exit(main())
