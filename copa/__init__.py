"""copa-bench: gradient-leakage attacks, the COPA attack and security metric, and a leaderboard."""

__version__ = "0.1.0"
