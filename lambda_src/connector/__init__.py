"""Stream-to-Personalize connector: ``source → change → item → putitems → response``.

Each step is one module; ``pipeline`` runs them in order and ``handler`` is the Lambda entry point.
"""
