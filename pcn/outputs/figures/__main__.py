"""``python -m pcn.outputs.figures NAME ...``: the same as ``pcn figure NAME ...``."""
from pcn.outputs.figures.command import main

raise SystemExit(main())
