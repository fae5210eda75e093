"""Attacks shipped with copa-bench, each one file registered exactly like a user's plug-in.

Every module in this package is imported by :func:`copa.attacks.load_plugins`; a module registers
its attacks with :func:`copa.attacks.register_attack`.
"""
