"""`python -m lmpretrain.distributed consolidate <ckpt folder> [--output FILE]`."""

from lmpretrain.distributed.consolidate import main
from lmpretrain.errors import exit_on_user_error

if __name__ == "__main__":
    exit_on_user_error(main)()
