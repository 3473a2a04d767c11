"""``python -m pipeline.cli`` runs the ``dptstream`` command line."""

from pipeline.cli.main import main

main()
