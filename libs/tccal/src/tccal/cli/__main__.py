"""`python -m tccal.cli` is `tc-calendar`."""

from tccal.cli.main import main

main()
