"""The `hpcbatch` command line: thin clients of the controller API, lazy imports."""
