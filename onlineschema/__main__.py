"""``python -m onlineschema``: the command line."""

from onlineschema.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
