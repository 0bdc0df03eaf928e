"""``python -m noisybench.data.realnoise {hash,manifest,export} DATASET ...``"""

import sys

from noisybench.data.realnoise.export import main

sys.exit(main())
