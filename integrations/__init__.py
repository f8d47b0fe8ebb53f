"""Serving-framework adapters, one module per framework (docs/integrations.md).

The sources live in the repository's top-level ``integrations/`` folder and are installed as
``dg_moe.integrations`` (pyproject.toml maps the package there), never as a top-level
``integrations`` package. Each adapter imports its framework only when its ``register()`` runs, so
importing dg_moe, or this package, never imports a serving framework.
"""
