"""The subcommands behind `qbo-gateway`: serve, demo, check-config, tokens and connect."""
