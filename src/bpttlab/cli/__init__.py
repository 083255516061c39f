"""The command line: the Hydra entry point, config checks, preflight and hparams."""
