"""Shard parsing, shards from SLURM/torchrun variables, and the assignment of scans to shards."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mri_lrp.errors import SettingsError
from mri_lrp.shard import (
    Shard,
    assign,
    local_device_from_env,
    parse_array_spec,
    shard_from_env,
)


def slurm_env(task: int, low: int, high: int, count: int, step: int = 1, **extra: str) -> dict[str, str]:
    """The variables SLURM sets in an array task (values as observed from a real slurmd)."""
    return {
        "SLURM_ARRAY_JOB_ID": "42",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_TASK_STEP": str(step),
        **extra,
    }


# --- Shard.parse ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected", [("0/1", Shard(0, 1)), ("2/3", Shard(2, 3)), (" 1 / 4 ", Shard(1, 4))]
)
def test_parse_reads_zero_based_index_of_count(text: str, expected: Shard) -> None:
    assert Shard.parse(text) == expected
    assert str(expected) == f"{expected.index}/{expected.count}"


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1/0", "0/0", "1", "1/2/3", "", "+1/2", "1.0/2"])
def test_parse_rejects_nonsense_with_a_settings_error(text: str) -> None:
    with pytest.raises(SettingsError, match="shard"):
        Shard.parse(text)


def test_part_name_round_trips_and_other_folder_names_are_not_shards() -> None:
    assert Shard(1, 3).part_name == "shard-1-of-3"
    assert Shard.from_part_name("shard-1-of-3") == Shard(1, 3)
    for name in ("shard-3-of-3", "shard-1-of-3.tmp", "shard-a-of-3", "notes"):
        assert Shard.from_part_name(name) is None


# --- SLURM arrays ---------------------------------------------------------------------------------
def test_contiguous_array_task_takes_its_offset_from_the_minimum() -> None:
    shards = [shard_from_env(slurm_env(task, 3, 6, 4)) for task in range(3, 7)]
    assert shards == [Shard(i, 4) for i in range(4)]


def test_sparse_stepped_array_uses_the_position_in_the_index_list_not_the_raw_id() -> None:
    # --array=1-7:2 -> ids 1,3,5,7 (SLURM sets STEP=2, COUNT=4)
    shards = [shard_from_env(slurm_env(task, 1, 7, 4, step=2)) for task in (1, 3, 5, 7)]
    assert shards == [Shard(i, 4) for i in range(4)]
    # --array=0-10:3 -> ids 0,3,6,9 (SLURM sets MAX=9, the last id, not 10)
    assert [shard_from_env(slurm_env(t, 0, 9, 4, step=3)) for t in (0, 3, 6, 9)] == [Shard(i, 4) for i in range(4)]


def test_two_task_irregular_array_is_its_minimum_and_maximum() -> None:
    # --array=0,9: SLURM reports STEP=1 even though the ids are 9 apart
    assert shard_from_env(slurm_env(0, 0, 9, 2)) == Shard(0, 2)
    assert shard_from_env(slurm_env(9, 0, 9, 2)) == Shard(1, 2)


def test_irregular_array_without_the_index_list_is_refused_rather_than_guessed() -> None:
    # --array=0,4,9: SLURM reports MIN=0 MAX=9 COUNT=3 STEP=1, which fits 0,4,9 and 0,5,9 alike;
    # even --array=1,3,5 comes with STEP=1, so no list of three or more ids is inferred
    with pytest.raises(SettingsError, match="MRI_LRP_ARRAY"):
        shard_from_env(slurm_env(4, 0, 9, 3))
    with pytest.raises(SettingsError, match="MRI_LRP_ARRAY"):
        shard_from_env(slurm_env(3, 1, 5, 3))


def test_array_index_list_from_mri_lrp_array_resolves_irregular_arrays() -> None:
    shards = [shard_from_env(slurm_env(task, 0, 9, 3, MRI_LRP_ARRAY="0,4,9")) for task in (0, 4, 9)]
    assert shards == [Shard(0, 3), Shard(1, 3), Shard(2, 3)]


def test_resubmitted_single_index_keeps_its_shard_when_the_original_array_is_named() -> None:
    # sbatch --array=1 looks like a one-task array; MRI_LRP_ARRAY=0-2 restores shard 1 of 3
    assert shard_from_env(slurm_env(1, 1, 1, 1)) == Shard(0, 1)
    assert shard_from_env(slurm_env(1, 1, 1, 1, MRI_LRP_ARRAY="0-2")) == Shard(1, 3)
    assert shard_from_env(slurm_env(5, 5, 5, 1, MRI_LRP_ARRAY="1-7:2")) == Shard(2, 4)


def test_task_outside_the_named_array_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="SLURM_ARRAY_TASK_ID=5"):
        shard_from_env(slurm_env(5, 5, 5, 1, MRI_LRP_ARRAY="0-2"))


@pytest.mark.parametrize(
    "spec, expected",
    [("0-2", [0, 1, 2]), ("1-7:2", [1, 3, 5, 7]), ("0,4,9", [0, 4, 9]), ("0-15%4", list(range(16))),
     ("3", [3]), ("5,0-2", [0, 1, 2, 5]), ("0-3,2-5", list(range(6)))],
)
def test_array_spec_expands_like_sbatch(spec: str, expected: list[int]) -> None:
    assert parse_array_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "a", "3-1", "1-7:0", "1-", "-1", "1-9999999999"])
def test_bad_array_spec_is_a_settings_error(spec: str) -> None:
    with pytest.raises(SettingsError, match="MRI_LRP_ARRAY"):
        parse_array_spec(spec)


def test_step_inconsistent_with_count_falls_back_to_the_irregular_rule() -> None:
    with pytest.raises(SettingsError, match="step is not given"):
        shard_from_env(slurm_env(4, 0, 9, 3, step=2))


def test_non_numeric_slurm_variable_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="SLURM_ARRAY_TASK_ID"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "x"})


def test_array_variables_without_min_and_max_are_refused() -> None:
    with pytest.raises(SettingsError, match="_MIN/_MAX"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "1"})


# --- torchrun and composition ---------------------------------------------------------------------
def test_torchrun_rank_and_world_size_give_the_shard() -> None:
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}) == Shard(2, 4)


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}])
def test_incomplete_or_inconsistent_torchrun_variables_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="torchrun"):
        shard_from_env(env)


def test_torchrun_ranks_inside_an_array_task_split_that_task_s_share() -> None:
    shards = {
        shard_from_env({**slurm_env(task, 1, 7, 4, step=2), "RANK": str(rank), "WORLD_SIZE": "2"})
        for task in (1, 3, 5, 7)
        for rank in range(2)
    }
    assert shards == {Shard(i, 8) for i in range(8)}


def test_no_cluster_variables_means_no_shard() -> None:
    assert shard_from_env({"PATH": "/usr/bin", "SLURM_JOB_ID": "7"}) is None


def test_local_rank_picks_the_gpu() -> None:
    assert local_device_from_env({"LOCAL_RANK": "3"}) == "cuda:3"
    assert local_device_from_env({}) is None
    with pytest.raises(SettingsError, match="LOCAL_RANK"):
        local_device_from_env({"LOCAL_RANK": "-1"})


# --- assignment -----------------------------------------------------------------------------------
def ids(n: int) -> list[str]:
    return [f"patient{i:03d}_t1" for i in range(n)]


@pytest.mark.parametrize("n_scans, n_shards", [(0, 3), (1, 1), (2, 5), (7, 3), (10, 10), (101, 8)])
def test_every_scan_lands_in_exactly_one_shard_and_sizes_differ_by_at_most_one(
    n_scans: int, n_shards: int
) -> None:
    scans = ids(n_scans)
    parts = [assign(scans, Shard(i, n_shards)) for i in range(n_shards)]
    counts = Counter(scan for part in parts for scan in part)
    assert set(counts) == set(scans) and set(counts.values()) <= {1}
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_more_shards_than_scans_leaves_some_shards_empty() -> None:
    parts = [assign(ids(3), Shard(i, 5)) for i in range(5)]
    assert sorted(len(part) for part in parts) == [0, 0, 1, 1, 1]


def test_assignment_ignores_input_order() -> None:
    scans = ids(50)
    shuffled = scans[:]
    random.Random(0).shuffle(shuffled)
    for i in range(4):
        assert assign(scans, Shard(i, 4)) == assign(shuffled, Shard(i, 4))


def test_assignment_is_the_same_in_a_fresh_interpreter() -> None:
    # guards against Python's per-process string hash randomisation sneaking in
    code = (
        "from mri_lrp.shard import Shard, assign;"
        "print(','.join(assign([f'patient{i:03d}_t1' for i in range(40)], Shard(1, 3))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().split(",") == assign(ids(40), Shard(1, 3))


def test_assignment_is_pinned_to_sha256_of_the_id() -> None:
    # sha256 orders these as d (18ac..), c (2e7d..), b (3e23..), a (ca97..); dealt round-robin.
    # Changing the hash or the dealing would silently reshuffle users' shards between versions.
    assert assign(["a", "b", "c", "d"], Shard(0, 2)) == ["d", "b"]
    assert assign(["a", "b", "c", "d"], Shard(1, 2)) == ["c", "a"]


def test_duplicate_ids_cannot_be_assigned() -> None:
    with pytest.raises(ValueError, match="unique"):
        assign(["a", "a"], Shard(0, 1))


@pytest.mark.slow
def test_real_torchrun_processes_each_take_one_rank_shard(tmp_path: Path) -> None:
    script = tmp_path / "show.py"
    script.write_text(
        "import os\nfrom mri_lrp.shard import shard_from_env, local_device_from_env\n"
        "print(shard_from_env(os.environ), local_device_from_env(os.environ), flush=True)\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        # the form configs/slurm/README.md documents: torchrun starting an executable with --no-python
        [str(torchrun), "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert sorted(line.strip() for line in result.stdout.splitlines() if "/" in line) == [
        "0/2 cuda:0", "1/2 cuda:1"
    ]
