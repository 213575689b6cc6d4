"""One module per ``orchestrate`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
