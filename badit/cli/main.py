"""The `badit` command."""

import sys


def main(argv=None) -> int:
    print("badit: not yet (the command lands with the training issue)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
