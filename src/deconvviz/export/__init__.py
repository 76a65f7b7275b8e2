"""The writers: the HTML report (``report``), the per-unit site (``atlas``), the shipped network's
report (``demo``), reconstruction folders (``reconstructions``), the files of the measuring
commands (``measures``) and of the registered analyses (``analyses``).

Import names from their modules; this package re-exports nothing. See docs/architecture.md.
"""
