"""Snakemake script of rule `verify`: copa.bench.verify.verify_results on the run's results_dir."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    from copa.bench.terminal import JobTerminal
    from copa.bench.verify import verify_results, write_verification

    terminal = JobTerminal("verify")

    def say(line):
        """A verdict: in the job's log and on the terminal."""
        print(line, file=log, flush=True)
        terminal.say(line)

    results_dir = Path(sm.input.records).parent
    with terminal.watching():
        results = verify_results(results_dir, sample=int(sm.params.sample), seed=int(sm.params.seed),
                                 device=sm.config.get("device", "cpu") if sm.config.get("device") != "auto" else "cpu",
                                 threads=sm.threads, log=say)
    write_verification(results, sm.output[0], command=f"copa verify {results_dir} --sample {sm.params.sample} "
                                                      f"--seed {sm.params.seed}", results_dir=results_dir)
