"""Issue 26 item 2: the workflow packs runs.  Config `pack` groups the grid's runs by shape into
`pcn pack` jobs (one rule per pack), every run keeping its own outputs and checkpoint folder;
`pack: auto` packs on a GPU and not on a CPU; a bad value stops the workflow at parse time."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pcn.outputs.naming import run_dir

from tests.test_workflow import DATA_TEMPLATE, SNAKEFILE, job_blocks, job_counts

SNAKEMAKE = shutil.which("snakemake") or "snakemake"
TINY_TRAIN = {"val_size": 100, "train_subset": 256, "test_subset": 128, "eval_train_size": 64, "epochs": 1,
              "batch_size": 64, "layers": [784, 16, 8], "T": 3}
GRID = {"dataset": ["mnist"], "model": ["pcn"], "rule": ["pc", "bp"], "init": ["zeros"], "ce_weight": [0.5],
        "seed": [0, 1, 2]}


def snakemake(*args, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = ["timeout", "-s", "KILL", str(timeout), SNAKEMAKE, "-s", str(SNAKEFILE), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _write(tmp_path: Path, **extra) -> None:
    cfg = {"data_dir": DATA_TEMPLATE, "device": "cpu", "train": TINY_TRAIN, "grid": GRID, **extra}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))


def _packs(out: str) -> dict[str, int]:
    return {k: v for k, v in job_counts(out).items() if k.startswith("train_pack_")}


def test_pack_groups_runs_by_shape_into_jobs(tmp_path):
    _write(tmp_path, pack=2)
    res = snakemake("-n", "-p", "--cores", "2", "--configfile", "c.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    counts = job_counts(res.stdout)
    assert "train" not in counts
    # pc and bp differ in shape: 3 seeds each in packs of at most 2 -> 2 + 2 jobs
    assert len(_packs(res.stdout)) == 4, counts
    commands = re.findall(r"python -m pcn pack .*", res.stdout)
    runs = [[tuple(a.strip("'") for a in m) for m in re.findall(r"--run (\S+) (\S+) --ckpt-dir (\S+)", c)]
            for c in commands]
    assert sorted(len(r) for r in runs) == [1, 1, 2, 2]
    for pack in runs:
        for cfg, out, ckpt in pack:
            assert cfg == f"results/configs/{out[len('results/runs/'):]}.yaml"
            assert ckpt == f"results/checkpoints/{out[len('results/runs/'):]}"
        rules = {re.search(r"rule~(\w+)", out).group(1) for _, out, _ in pack}
        assert len(rules) == 1  # a pack never mixes shapes
    # every run is trained exactly once
    outs = [out for pack in runs for _, out, _ in pack]
    assert len(outs) == len(set(outs)) == 6


def test_pack_auto_packs_on_a_gpu_only(tmp_path):
    _write(tmp_path)  # pack: auto (the default), device cpu
    res = snakemake("-n", "--cores", "2", "--configfile", "c.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert job_counts(res.stdout)["train"] == 6 and not _packs(res.stdout)
    res = snakemake("-n", "--cores", "2", "--configfile", "c.yaml", "--config", "device=cuda", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "train" not in job_counts(res.stdout) and len(_packs(res.stdout)) == 2
    blocks = [b for rule, b in job_blocks(res.stdout) if rule.startswith("train_pack_")]
    assert len(blocks) == 2 and all("gpu=1" in b for b in blocks)
    res = snakemake("-n", "--cores", "2", "--configfile", "c.yaml", "--config", "pack=1", cwd=tmp_path)
    assert job_counts(res.stdout)["train"] == 6


def test_bad_pack_value_is_one_line_at_parse_time(tmp_path):
    for bad in (0, "big"):
        _write(tmp_path, pack=bad)
        res = snakemake("-n", "--cores", "1", "--configfile", "c.yaml", cwd=tmp_path)
        assert res.returncode != 0 and "pack" in res.stdout, res.stdout[-2000:]


def test_a_pack_job_trains_its_runs(tmp_path):
    """Two runs in one job: each gets its own outputs and checkpoint; a second run of the
    workflow has nothing left to train."""
    _write(tmp_path, pack=4, grid={**GRID, "rule": ["pc-ep"], "seed": [0, 1]})
    point = {k: v[0] for k, v in GRID.items()}
    runs = [f"results/runs/{run_dir({**point, 'rule': 'pc-ep', 'seed': s})}" for s in (0, 1)]
    targets = [f"{r}/final.json" for r in runs]
    res = snakemake(*targets, "--cores", "2", "--configfile", "c.yaml", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert len(_packs(res.stdout)) == 1
    for s, r in zip((0, 1), runs):
        final = json.loads((tmp_path / r / "final.json").read_text())
        assert final["seed"] == s and final["epochs_done"] == 1 and not final["diverged"]
        assert (tmp_path / "results" / "checkpoints" / r[len("results/runs/"):] / "ckpt.pt").exists()
    logs = list((tmp_path / "results" / "logs" / "train_pack").glob("*.log"))
    assert len(logs) == 1 and "pack of 2 run(s)" in logs[0].read_text()
    res = snakemake(*targets, "-n", "--cores", "2", "--configfile", "c.yaml", cwd=tmp_path)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout, res.stdout[-2000:]
