"""The `gpt1` command line: config loading, the run chain and the launchers."""
