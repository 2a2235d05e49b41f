import sys

from tf_divtrain.pipeline.cli import main

sys.exit(main())
