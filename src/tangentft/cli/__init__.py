"""The ``tangentft`` command line: parses arguments and calls the library, nothing else."""
