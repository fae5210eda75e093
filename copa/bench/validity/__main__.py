"""``python -m copa.bench.validity``: :func:`copa.bench.validity.command.main`."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
