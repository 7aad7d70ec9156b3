"""Run the `tinysd` command from a source checkout: `python3 cli.py generate ...`.

The click app lives in `tinysd/cli.py`; the installed command is `tinysd` (or `python -m tinysd`).
"""
from tinysd.cli import cli, main  # noqa: F401

if __name__ == "__main__":
    main()
