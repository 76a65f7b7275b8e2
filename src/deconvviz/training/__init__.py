"""Training the example targets: the recipe and loop (``train``) and the origin report's
optimizer/learning-rate grids (``sweep``). Runs write their own folders as they go.

Import names from their modules; this package re-exports nothing. See docs/architecture.md.
"""
