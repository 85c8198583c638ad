import sys

from qingluan.cli import main

sys.exit(main())
