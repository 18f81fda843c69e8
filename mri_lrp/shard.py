"""Which scans a process handles when a folder is split over SLURM array tasks or torchrun ranks.

A shard is ``I/N`` (0-based). It comes from ``--shard``, else from the environment:

* a SLURM array task takes its *position* in the array's index list, not its raw ID, so sparse arrays
  such as ``--array=1-7:2`` give shards 0..3 of 4. SLURM describes the list only by ``_MIN``, ``_MAX``,
  ``_STEP`` and ``_COUNT``; an irregular list like ``0,4,9`` cannot be rebuilt from those, and neither can
  the original array when a single index is resubmitted (``--array=1`` looks like an array of one).
  For both, ``MRI_LRP_ARRAY`` names the full index list (``MRI_LRP_ARRAY=0,4,9`` or ``0-2``) and the task
  takes its position in that list; without it an irregular list is refused rather than guessed.
* torchrun's ``RANK``/``WORLD_SIZE`` split the work between processes (one per GPU, picked by
  ``LOCAL_RANK``). Inside a SLURM array task the two compose: array position p of P and rank r of W give
  shard ``p*W + r`` of ``P*W``.

Assignment sorts scan ids by the SHA-256 of the id and deals them round-robin: it depends only on the set
of ids (not on file order, machine or rerun), shard sizes differ by at most one, and each id lands in
exactly one shard. Every shard must therefore see the same set of scans; each writes the ids it was dealt
to ``plan.txt``, and the merge checks that the plans fit together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mri_lrp.errors import SettingsError

ARRAY_ENV = "MRI_LRP_ARRAY"
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_PART_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
_MAX_ARRAY_TASKS = 10_000_000  # far above any SLURM MaxArraySize; stops a typo from allocating a huge list


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SettingsError(f"shard {self.index}/{self.count}: needs 0 <= I < N and N >= 1")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read ``"I/N"`` as given to ``--shard``."""
        match = _SHARD_RE.match(text)
        if match is None:
            raise SettingsError(f"shard '{text}': expected I/N with 0-based I, e.g. 0/4")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_part_name(cls, name: str) -> Shard | None:
        """The shard a ``parts/shard-I-of-N`` folder belongs to, or None for any other name."""
        match = _PART_RE.match(name)
        if match is None:
            return None
        try:
            return cls(int(match.group(1)), int(match.group(2)))
        except SettingsError:
            return None

    @property
    def part_name(self) -> str:
        """Folder name under ``OUT/parts/`` for this shard's tables."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_array_spec(text: str) -> list[int]:
    """Expand a SLURM ``--array`` value (``0-7``, ``1-7:2``, ``0,4,9``, ``0-15%4``) to its sorted indices."""
    body = text.strip().split("%", 1)[0]
    indices: set[int] = set()
    for item in body.split(","):
        match = _RANGE_RE.match(item.strip())
        if match is None:
            raise SettingsError(f"{ARRAY_ENV}='{text}': '{item}' is not N, N-M or N-M:S")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        step = int(match.group(3)) if match.group(3) is not None else 1
        if stop < start or step < 1:
            raise SettingsError(f"{ARRAY_ENV}='{text}': '{item}' is an empty range")
        if len(indices) + (stop - start) // step + 1 > _MAX_ARRAY_TASKS:
            raise SettingsError(f"{ARRAY_ENV}='{text}': more than {_MAX_ARRAY_TASKS} tasks")
        indices.update(range(start, stop + 1, step))
    return sorted(indices)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    """An integer environment variable, None when unset or empty; a typed error when it is not a number."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"environment variable {name}='{value}' is not an integer") from None


def _slurm_array_indices(environ: Mapping[str, str]) -> list[int]:
    """The array's index list from SLURM's variables; refuses lists they cannot describe exactly."""
    low = _env_int(environ, "SLURM_ARRAY_TASK_MIN")
    high = _env_int(environ, "SLURM_ARRAY_TASK_MAX")
    count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
    step = _env_int(environ, "SLURM_ARRAY_TASK_STEP")
    hint = f"set {ARRAY_ENV} to the array's index list (e.g. {ARRAY_ENV}=0,4,9) or pass --shard I/N"
    if low is None or high is None or high < low:
        raise SettingsError(f"SLURM array variables _MIN/_MAX are missing or inconsistent; {hint}")
    if step is not None and step >= 1:
        candidate = list(range(low, high + 1, step))
        if candidate[-1] == high and (count is None or count == len(candidate)):
            return candidate
    if count is None and step is None:
        return list(range(low, high + 1))
    if count == high - low + 1:
        return list(range(low, high + 1))
    if count == 1 and low == high:
        return [low]
    if count == 2:
        return [low, high]
    raise SettingsError(
        f"SLURM array {low}..{high} with {count} tasks: its step is not given (a list like 0,4,9), so "
        f"the task's position in it is unknown; {hint}"
    )


def _slurm_array_shard(environ: Mapping[str, str]) -> Shard | None:
    """This task's position in its SLURM array, or None outside an array job."""
    task = _env_int(environ, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    spec = environ.get(ARRAY_ENV, "").strip()
    indices = parse_array_spec(spec) if spec else _slurm_array_indices(environ)
    try:
        position = indices.index(task)
    except ValueError:
        where = f"{ARRAY_ENV}='{spec}'" if spec else "the array's index list"
        raise SettingsError(f"SLURM_ARRAY_TASK_ID={task} is not in {where}") from None
    return Shard(position, len(indices))


def _torchrun_shard(environ: Mapping[str, str]) -> Shard | None:
    """This process's rank among torchrun's processes, or None when not launched by torchrun."""
    rank = _env_int(environ, "RANK")
    world = _env_int(environ, "WORLD_SIZE")
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        raise SettingsError("torchrun variables: RANK and WORLD_SIZE must be set together")
    if world < 1 or not 0 <= rank < world:
        raise SettingsError(f"torchrun variables: RANK={rank} is not within WORLD_SIZE={world}")
    return Shard(rank, world)


def shard_from_env(environ: Mapping[str, str]) -> Shard | None:
    """The shard implied by SLURM array and/or torchrun variables; None when neither is set.

    An explicit ``--shard`` is the caller's business and always wins over this.
    """
    array = _slurm_array_shard(environ)
    ranks = _torchrun_shard(environ)
    if array is None or ranks is None:
        return array or ranks
    return Shard(array.index * ranks.count + ranks.index, array.count * ranks.count)


def local_device_from_env(environ: Mapping[str, str]) -> str | None:
    """The GPU a torchrun process should use (``cuda:<LOCAL_RANK>``), None when LOCAL_RANK is unset.

    The caller applies it only when the device is ``auto`` and CUDA is available.
    """
    local_rank = _env_int(environ, "LOCAL_RANK")
    if local_rank is None:
        return None
    if local_rank < 0:
        raise SettingsError(f"environment variable LOCAL_RANK={local_rank} is negative")
    return f"cuda:{local_rank}"


def _hash_key(scan_id: str) -> tuple[bytes, str]:
    return hashlib.sha256(scan_id.encode("utf-8")).digest(), scan_id


def assign(scan_ids: Iterable[str], shard: Shard) -> list[str]:
    """The ids this shard handles, in a stable order; every id of the set goes to exactly one shard."""
    ids = list(scan_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("scan ids must be unique to be assigned to shards")
    ordered = sorted(ids, key=_hash_key)
    return ordered[shard.index :: shard.count]

