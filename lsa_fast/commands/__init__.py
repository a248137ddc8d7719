"""One module per `lsa-fast` subcommand; see lsa_fast/cli.py."""
