"""The subcommands behind `qbo-gateway`: serve, demo, check-config, tokens and connect.

Each is a function returning an exit code; `cli` parses the arguments and imports the one
it runs, so a quick command (`keygen`, `check`) does not load the whole gateway.
"""
