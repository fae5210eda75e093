"""Shared start of the workflow scripts: the copa package from this checkout, the job's log, one error line."""

import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # e.g. under --use-conda, where copa-bench itself is not installed
    sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def logged(log_path):
    """Send stdout and stderr to the job's log; a CopaError (bad input) exits 2 with its message only."""
    from copa.errors import CopaError

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            yield log
        except CopaError as exc:
            print(f"copa: error: {exc}", file=log)
            log.flush()
            sys.exit(2)
