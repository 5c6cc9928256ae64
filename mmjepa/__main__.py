import sys

from mmjepa_cli import main

sys.exit(main())
