"""Snakemake script of rule `security`: copa.bench.pipeline.security_entry (ok, or not-applicable with the reason)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

run = snakemake.params.run  # noqa: F821

with logged(snakemake.log[0]) as log:  # noqa: F821
    from copa.bench import set_threads
    from copa.io import atomic_write_json
    from copa.bench.pipeline import security_entry
    from copa.bench.terminal import JobTerminal

    set_threads(snakemake.threads)  # noqa: F821
    with JobTerminal(f"security {snakemake.wildcards.model}").watching():  # noqa: F821 (a heartbeat every 30 s)
        entry = security_entry(run, snakemake.wildcards.model)  # noqa: F821
    atomic_write_json(snakemake.output[0], entry)  # noqa: F821
    print(f"{entry['model']}: {entry['status']}, COPA index {entry['copa_index']}, "
          f"normalised score {entry['normalised_score']} ({entry['seconds']} s){' — ' + entry['reason'] if entry['reason'] else ''}",
          file=log)
