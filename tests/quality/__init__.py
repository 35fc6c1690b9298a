"""`make quality`: render a fixed set of hard cases and show how the mouth looks and how well it syncs.

Renders go through the engine's public API (``engine.Engine``) and are judged by ``engine.evaluate`` (the
same figures as ``python -m engine eval``), so this harness keeps working while the renderer and the face
backend change underneath it. Outputs land in ``out/quality/``: per case the MP4 and a contact sheet of the
mouth, plus ``report.md`` and ``report.json``.
"""
