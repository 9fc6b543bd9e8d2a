"""FlexBERT pretraining entry point.

    composer main.py yamls/pretrain_base.yaml [key.sub=value ...]     # all GPUs of a node (or --world_size/...)
    python main.py yamls/demo.yaml [key.sub=value ...]                # one process
"""

import sys

from flexbert.train.trainer import main

if __name__ == "__main__":
    sys.exit(main())
