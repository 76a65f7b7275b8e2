"""The deconvviz command-line app."""
