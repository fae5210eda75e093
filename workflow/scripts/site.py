"""Snakemake script of rule `site`: copa.bench.site.write_site on the published folders."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    from copa.bench.site import write_site

    result = write_site(sm.params.folders, Path(sm.output[0]).parent)
    print(f"{result.out}: {len(result.written)} files written, {result.unchanged} unchanged, "
          f"{len(result.removed)} removed", file=log)
