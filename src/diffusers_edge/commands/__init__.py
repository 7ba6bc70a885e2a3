"""One module per `diffusers-edge` subcommand, each exposing `main(argv: list[str] | None) -> int`."""
