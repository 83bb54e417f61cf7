from fewseg.cli import main

raise SystemExit(main())
