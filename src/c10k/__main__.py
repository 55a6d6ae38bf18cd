from c10k.cli import main

raise SystemExit(main())
