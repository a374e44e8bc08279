"""The command line: `unggah` and its subcommands, the admin commands, and `unggah up`'s supervisor.

The top floor: it composes every package below and nothing imports it.
"""
