"""``python -m medshield.cli``."""

from medshield.cli import main

main()
