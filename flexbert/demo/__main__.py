import sys

from flexbert.demo.run import main

sys.exit(main())
