"""One module per `aster` subcommand; each defines `register(subparsers)`."""
