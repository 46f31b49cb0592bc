"""`python -m flagserver` is the `flagserver` command."""

from .cli import main

main()
