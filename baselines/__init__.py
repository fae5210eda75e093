"""Attacks shipped with copa-bench (installed as the package ``copa_baselines``), each one file registered
exactly like a third-party plug-in: pyproject.toml names every module as an entry point of the group
``copa.attacks``, and :func:`copa.plugins.load_plugins` imports them. Each module imports only copa's
public API (``copa.attacks``, ``copa.layerwise``, ``copa.errors``; tests/test_architecture.py checks).
"""
