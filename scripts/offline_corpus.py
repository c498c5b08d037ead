"""Build the offline development corpus (see ``shards/devcorpus.py``) and shard it.

    python scripts/offline_corpus.py -o runs/devcorpus [--packages ...] [--max-shorter 512] [--split-val 0.15]
"""

import sys

from shards.devcorpus import main

if __name__ == "__main__":
    sys.exit(main())
