"""The md-export command line: thin commands over library calls."""
