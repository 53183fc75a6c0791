import sys

from corpus_cache.cli.main import main

sys.exit(main())
