"""Bridges to federated-learning frameworks: they turn what a deployment's clients send into copa
observation files (docs/observations.md). Each needs its optional extra (``flower``: ``copa-bench[flower]``)."""
