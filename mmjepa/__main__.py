import sys

from mmjepa.cli import main

sys.exit(main())
