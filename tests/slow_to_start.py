"""A candidate whose import takes 3 s (a big library, a loaded machine): an isolated run
must not charge that to its first call's --candidate-timeout."""

import time

from reference.loading import ReferenceLoader

time.sleep(3)
loader = ReferenceLoader()
