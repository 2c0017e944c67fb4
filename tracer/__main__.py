"""`python -m tracer` runs the same command line as the `tracer` script."""

from tracer.cli import main

main()
