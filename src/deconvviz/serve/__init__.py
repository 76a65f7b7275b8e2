"""``deconvviz serve``: explore a network live in the browser.

:class:`~deconvviz.serve.explorer.Explorer` holds the model, the dataset and the top-k (from an
atlas or a background scan) and computes every view of the page (no web framework there);
:class:`~deconvviz.serve.worker.ModelWorker` runs that work on one thread per device and drops a
request a newer one from the same page has superseded; :func:`deconvviz.serve.app.create_app`
is the Starlette app (the ``serve`` extra) that exposes it as the HTTP API of ``docs/serve.md``
and serves the page in ``static/``.

Nothing here is imported by ``import deconvviz``; Starlette is imported only by ``app``.
"""

from __future__ import annotations

__all__: list[str] = []
