from mtcnn.cli import main

raise SystemExit(main())
