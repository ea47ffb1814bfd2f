"""``python -m bench``: see ``bench/RESULTS.md``."""

from bench.run import main

raise SystemExit(main())
