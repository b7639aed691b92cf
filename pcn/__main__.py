from pcn.cli import main

raise SystemExit(main())
