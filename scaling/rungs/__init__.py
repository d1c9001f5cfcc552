"""``python -m scaling.rungs`` (``python -m scaling models``): the rung table and what one rung's
stage would cost. A command above the ladder: it reads the stage recipes (``scaling.config``) and
the ladder file's teachers, which the rung registry below them must not import."""
