"""Options: the command line over a recipe over the family's defaults."""
