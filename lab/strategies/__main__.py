import sys

from lab.strategies.serve import main

sys.exit(main())
