"""python -m host_tools.cli: the edgepay command."""
import sys

from host_tools.cli import main

sys.exit(main())
