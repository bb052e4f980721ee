"""The version package: its files, formats and checks. One module per file format."""
