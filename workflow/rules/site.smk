localrules:
    site,


# The published folders: every results folder under results/ and every submission under submissions/
# (copa.bench.site.published_folders), whatever the config; found when the workflow is read.
SITE_FOLDERS = [str(p) for p in published_folders(".")]


rule site:
    """The leaderboard's static website (copa.bench.site): site/ from every published results folder and submission
    (`snakemake site`, not part of all). Rebuilt when any of their files or the site's templates change; only the
    pages whose bytes change are rewritten."""
    input:
        site_inputs(SITE_FOLDERS),
    output:
        "site/site.json",
    params:
        folders=SITE_FOLDERS,
    log:
        f"{OUT}/logs/site.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/site.py"
