"""`python -m tinysd ...` and the installed `tinysd` command.

`main` imports the click app itself, so that Ctrl-C while the (slow) imports run ends
with one line and status 130, not a traceback.
"""
import sys


def main(argv=None):
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("tinysd: aborted\n")
        sys.exit(130)
    return cli_main(argv)


if __name__ == "__main__":
    main()
