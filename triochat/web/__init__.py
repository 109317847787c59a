"""The chat page: plain HTML, CSS and JavaScript in ``static/``, served by the web door.

No build step and no framework: ``pip install .`` ships these files as they are,
and the page loads nothing from any other host (``docs/web.md``).
"""
