"""Size bounds checked before anything is allocated: what an observation file may declare and what a scenario
may ask for (:class:`Limits`; ``copa attack --max-...``). One owner, used by :mod:`.observation_file` and
:mod:`.scenario`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidSpecError

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bounds on what an observation file may declare, checked before anything is allocated from it.
    The defaults are far above the benchmark's sizes and admit every registered model; raise one with
    ``copa attack --observation F --max-...`` or ``load_observation(F, limits=Limits(...))``."""

    #: Trainable parameters of the declared model. 200 M is 18× resnet18 (11.2 M), the largest registered
    #: model; in float64 its weights and gradients then take 3.2 GB.
    max_parameters: int = 200_000_000
    #: C·H·W of ``input_shape``: a 3×1024×1024 image (the benchmark's are 3×32×32, ImageNet's 3×224×224).
    #: One float64 image is then 25 MB.
    max_input_pixels: int = 3 * 1024 * 1024
    #: Images in the client's step: FL clients train on tens to hundreds of images per step, 4096 is well above;
    #: the attacks optimise one dummy image per image, so their memory grows with it (and with the pixels).
    max_batch_size: int = 4096
    #: Classes of the model's output: 4.6× ImageNet-21k's 21 841 (the output layer is also bounded by
    #: ``max_parameters``).
    max_num_classes: int = 100_000

    def __post_init__(self) -> None:
        for field, how in LIMIT_FLAGS.items():
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidSpecError(f"{how if how.startswith('--') else field} {value!r} is invalid: expected a "
                                       f"positive integer")

    @property
    def max_file_bytes(self) -> int:
        """The largest file (and unpacked zip archive) read: weights, gradients and buffers of
        ``max_parameters`` float64 values (3 × 8 bytes each) and 64 MiB for everything else."""
        return 3 * 8 * self.max_parameters + 64 * MIB


#: How to raise each limit (the messages name it).
LIMIT_FLAGS = {"max_parameters": "--max-parameters", "max_input_pixels": "--max-input-pixels",
               "max_batch_size": "--max-batch-size", "max_num_classes": "Limits(max_num_classes=...)"}
DEFAULT_LIMITS = Limits()


def over_limit(head: str, limit: str, field: str) -> InvalidSpecError:
    """The one-line refusal of a size above one of the :class:`Limits` (observation files and scenarios)."""
    return InvalidSpecError(f"{head}, above the limit of {limit} (raise it with {LIMIT_FLAGS[field]})")
