"""`python -m tinysd ...`: the tinysd command line."""
from .cli import main

main()
