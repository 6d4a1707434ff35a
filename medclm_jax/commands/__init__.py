"""One thin module per `medclm` command (`medclm_jax/cli.py` lists them): each `main(argv) -> int` parses the
command line with argparse and calls library functions, which live (and are tested) in the library packages.

`demo` is the one module of medclm_jax that imports data_gen: it composes both halves.
"""
