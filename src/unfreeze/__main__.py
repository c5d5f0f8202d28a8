from unfreeze.cli import main

raise SystemExit(main())
