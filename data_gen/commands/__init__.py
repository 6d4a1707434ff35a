"""One thin module per `medclm-data` command (`data_gen/cli.py` lists them): each `main(argv) -> int` parses the
command line with argparse and calls the library (`data_gen.build`, `data_gen.phantom`)."""
