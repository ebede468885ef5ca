"""Test fixtures that ship with the package: the tiny random-weight checkpoint (``tiny``) that the tests, the
integration lane and the CLI's ``--tiny`` / no-weights fallback run on. Nothing here is used to make real videos."""
